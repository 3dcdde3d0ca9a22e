"""The training recipe: answer-only loss, and real DeepSpeed steps that lower the loss."""

from __future__ import annotations

import math

import pytest
import torch

import adapters
from jobs import backbones
from jobs.contract import IGNORE, TrainArgs
from jobs.families import multiple_choice as tasks
from jobs.families.multiple_choice import tokenize
from jobs.train import DivergedError, make_schedule, train


def test_loss_covers_exactly_the_answer_tokens():
    _, tokenizer = backbones.load("tiny-llama")
    [row] = tokenize([("Question: What is 2+2?\nAnswer:", " four")], tokenizer, max_len=64)
    answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]
    assert tokenizer.decode(answer) == " four"
    assert row["labels"][: len(row["labels"]) - len(answer)] == [IGNORE] * (len(row["labels"]) - len(answer))


def test_truncation_keeps_the_answer():
    _, tokenizer = backbones.load("tiny-llama")
    [row] = tokenize([("word " * 200 + "end", " the answer")], tokenizer, max_len=16)
    assert len(row["input_ids"]) == 16
    assert tokenizer.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l != IGNORE]) == " the answer"


@pytest.mark.parametrize("name, after_warmup", [
    ("linear", [1.0, 0.75, 0.5, 0.25]),  # to 0 over the 8 steps after warmup
    ("cosine", [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
    ("constant", [1.0, 1.0, 1.0, 1.0]),
])
def test_schedules_warm_up_linearly_then_follow_their_name(name, after_warmup):
    """10 steps, warmup_ratio 0.2: lr rises 0 → lr over 2 steps, then the named shape (every 2nd step shown)."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = make_schedule(optimizer, TrainArgs(lr=0.1, warmup_ratio=0.2, lr_scheduler=name), steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(schedule.get_last_lr()[0] / 0.1)
        optimizer.step()
        schedule.step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[2::2] == pytest.approx(after_warmup)


@pytest.mark.slow  # DeepSpeed engines
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_deepspeed_steps_lower_the_loss(zero_stage, data_dir):
    model, tokenizer = backbones.load("tiny-llama")
    model = adapters.apply(model, "full")  # a random tiny model: LoRA alone moves it too slowly to see in 20 steps
    examples = tasks.training_examples(["arc_easy"], 16, 0, data_dir)
    args = TrainArgs(lr=5e-3, micro_batch_size=4, max_steps=20, warmup_ratio=0.1, zero_stage=zero_stage, max_seq_len=96)
    # The same 16 examples repeat every 4 steps, so a working optimizer must fit them.
    _, result = train(model, tokenizer, tokenize(examples, tokenizer, 96), args, seed=0)
    assert result.steps == 20 and len(result.losses) == 20
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < first - 1.0, result.losses  # nats
    assert result.tokens_per_s > 0


@pytest.mark.slow  # DeepSpeed engines
def test_training_is_deterministic_for_a_seed(data_dir):
    examples = tasks.training_examples(["arc_easy"], 8, 0, data_dir)
    args = TrainArgs(lr=1e-3, micro_batch_size=4, max_steps=3, max_seq_len=96)
    runs = []
    for _ in range(2):
        model, tokenizer = backbones.load("tiny-llama")
        runs.append(train(adapters.apply(model, "lora", r=4), tokenizer, tokenize(examples, tokenizer, 96), args, seed=7)[1].losses)
    assert runs[0] == runs[1]


@pytest.mark.slow  # DeepSpeed engines
def test_divergence_is_an_error(data_dir):
    model, tokenizer = backbones.load("tiny-llama")
    model = adapters.apply(model, "lora", r=4)
    examples = tasks.training_examples(["arc_easy"], 8, 0, data_dir)
    with pytest.raises(DivergedError, match="loss is nan"):
        train(model, tokenizer, tokenize(examples, tokenizer, 96), TrainArgs(lr=1e30, micro_batch_size=4, max_steps=5, warmup_ratio=0, max_seq_len=96), seed=0)


def test_peak_memory_is_each_cells_own_in_a_reused_worker():
    """A reused Ray worker runs many cells: a big earlier cell must not set a later one's peak."""
    import torch

    from jobs import cell, memory

    cell._reset_peak_memory()
    big = torch.ones(64, 2**20)  # 256 MiB, touched
    first = memory.peak_mb()
    del big
    cell._reset_peak_memory()
    second = memory.peak_mb()
    assert first - second > 200, (first, second)


@pytest.mark.slow  # DeepSpeed engines
def test_a_checkpoint_cut_short_or_damaged_is_discarded_not_unpickled(data_dir, tmp_path):
    """A rerun resumes from a whole checkpoint; from one whose files no longer match the manifest
    written after the save (a crash mid-write, a bad disk) it starts afresh instead of failing
    in the unpickler every time, and says so."""
    examples = tasks.training_examples(["arc_easy"], 8, 0, data_dir)
    args = TrainArgs(lr=1e-3, micro_batch_size=4, max_steps=4, max_seq_len=96)

    def run(max_steps: int):
        model, tokenizer = backbones.load("tiny-llama")
        model = adapters.apply(model, "lora", r=4)
        rows = tokenize(examples, tokenizer, 96)
        return train(model, tokenizer, rows, args.model_copy(update={"max_steps": max_steps}), seed=0,
                     checkpoint_dir=tmp_path, checkpoint_every=2)[1]

    run(3)  # checkpoint at step 2, then stops at 3: step2/ stays for a rerun
    assert (tmp_path / "step2" / "sha256.json").exists()
    assert run(3).resumed_from == 2  # whole: resumed
    weights = next(f for f in (tmp_path / "step2").rglob("*.pt"))
    weights.write_bytes(b"not a pickle" + weights.read_bytes()[12:])  # damaged in place
    again = run(3)
    assert again.resumed_from == 0 and len(again.losses) == 3
    assert again.discarded == ["step2: files differ from its manifest"]
    (tmp_path / "step2" / "sha256.json").unlink()  # the rerun saved step2 anew; now a save cut short before its manifest
    cut = run(3)
    assert cut.resumed_from == 0 and cut.discarded == ["step2: no manifest (save cut short)"]

"""The GPU path, proven on CPU: precision, memory options, device-correct diagnostics, tokenizers
(pad-less, BOS-adding, against lm-eval's own encoding), the precision checks of `validate`, and
`python -m jobs.gpu_check --device cpu --tiny`, so the GPU check cannot rot between GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adapters
from jobs import backbones
from jobs.contract import IGNORE, TrainArgs
from jobs.families import multiple_choice as tasks
from jobs.train import deepspeed_config, train
from tests.helpers import TINY_SWEEP

ROOT = Path(__file__).resolve().parent.parent


def _rows(data_dir, tokenizer, n=8):
    return tasks.tokenize(tasks.training_examples(["arc_easy"], n, 0, data_dir), tokenizer, 96)


@pytest.mark.slow  # DeepSpeed engines
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_bf16_training_runs_end_to_end_through_deepspeed(zero_stage, data_dir):
    """Backbone held in bf16, adapters trained in float32 under autocast; the loss falls as in float32."""
    model, tokenizer = backbones.load("tiny-llama", dtype=torch.bfloat16)
    model = adapters.apply(model, "lora", r=4)
    args = TrainArgs(lr=1e-2, micro_batch_size=4, max_steps=12, warmup_ratio=0, zero_stage=zero_stage, max_seq_len=96, precision="bf16")
    assert deepspeed_config(args, 1)["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    model, result = train(model, tokenizer, _rows(data_dir, tokenizer), args, seed=0)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    assert sum(result.losses[-3:]) / 3 < sum(result.losses[:3]) / 3 - 0.05, result.losses
    assert result.peak_mem_mb > 0


@pytest.mark.slow  # DeepSpeed engines
def test_a_trained_bf16_head_goes_back_to_the_backbones_dtype(data_dir):
    """A trainable base parameter (here every one: `full`) trains in float32 and returns to bf16, so
    evaluation without autocast sees one dtype."""
    model, tokenizer = backbones.load("tiny-llama", dtype=torch.bfloat16)
    args = TrainArgs(lr=1e-3, micro_batch_size=4, max_steps=2, max_seq_len=96, precision="bf16")
    model, _ = train(adapters.apply(model, "full"), tokenizer, _rows(data_dir, tokenizer), args, seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.slow  # DeepSpeed engines
def test_gradient_checkpointing_leaves_the_loss_curve_unchanged(data_dir):
    curves = []
    for checkpointing in (False, True):
        model, tokenizer = backbones.load("tiny-llama")
        args = TrainArgs(lr=1e-2, micro_batch_size=4, max_steps=4, max_seq_len=96, gradient_checkpointing=checkpointing)
        curves.append(train(adapters.apply(model, "lora", r=4), tokenizer, _rows(data_dir, tokenizer), args, seed=3)[1].losses)
    assert curves[1] == pytest.approx(curves[0], rel=1e-5)


@pytest.mark.slow  # DeepSpeed engines
def test_a_tokenizer_without_a_pad_token_trains(data_dir):
    model, tokenizer = backbones.load("tiny-llama")
    tokenizer.pad_token = None  # as Llama-3's: collate used to fail on fill_value None
    assert tokenizer.pad_token_id is None
    args = TrainArgs(lr=1e-3, micro_batch_size=4, max_steps=2, max_seq_len=96)
    _, result = train(adapters.apply(model, "lora", r=4), tokenizer, _rows(data_dir, tokenizer), args, seed=0)
    assert len(result.losses) == 2


def test_deepspeed_overrides_merge_key_by_key_and_the_reduce_bucket_fits_the_adapter():
    args = TrainArgs(zero_stage=2, deepspeed={"zero_optimization": {"offload_optimizer": {"device": "cpu"}}, "wall_clock_breakdown": True})
    config = deepspeed_config(args, trainable=1000)
    assert config["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000, "offload_optimizer": {"device": "cpu"}}
    assert config["wall_clock_breakdown"] is True and "torch_autocast" not in deepspeed_config(TrainArgs(precision="fp32"), 1)
    assert deepspeed_config(TrainArgs(zero_stage=2), trainable=10**10)["zero_optimization"]["reduce_bucket_size"] == int(5e8)


def _bos_tokenizer():
    """SmolLM2's tokenizer with a post-processor that prepends BOS, as Llama-3's does."""
    from tokenizers import processors

    _, tokenizer = backbones.load("tiny-llama")
    bos = (tokenizer.bos_token, tokenizer.bos_token_id)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos])
    return tokenizer


@pytest.mark.parametrize("bos", [False, True], ids=["smollm2", "bos-prepending"])
def test_training_encodes_exactly_as_lm_evals_hflm_scores(data_dir, bos):
    """Context and answer tokens of every training row are HFLM's own `_encode_pair` (its
    `tok_encode`), BOS included where the tokenizer adds one; SmolLM2's adds none (as before)."""
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = backbones.load("tiny-llama")
    if bos:
        tokenizer = _bos_tokenizer()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    examples = tasks.training_examples(["arc_easy", "openbookqa"], 6, 0, data_dir) + [("The sky is ", "blue")]
    for (context, continuation), row in zip(examples, tasks.tokenize(examples, tokenizer, 10**6)):
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        assert row["input_ids"] == context_ids + continuation_ids
        assert row["labels"] == [IGNORE] * len(context_ids) + continuation_ids
        assert (row["input_ids"][0] == tokenizer.bos_token_id) == bos
        if not bos:  # what training encoded before: no special tokens
            assert row["input_ids"] == tokenizer(context + continuation, add_special_tokens=False).input_ids


@pytest.mark.parametrize("override, message", [
    ("precision: fp16", "train.precision: fp16 needs GPUs and tiny-llama's cells have none"),
    ("zero_stage: 3", "train.zero_stage: ZeRO stage 3 is not supported"),
    ("deepspeed: {zero_optimization: {stage: 3}}", "train.deepspeed: ZeRO stage 3 is not supported"),
    ("deepspeed: {bf16: {enabled: true}}", "train.deepspeed.bf16: set by the sweep's precision"),
    ("precision: fp64", "train.precision: Input should be 'auto', 'bf16', 'fp16' or 'fp32'"),
])
def test_validate_refuses_what_the_cells_cannot_run_in_one_line(write_spec, capsys, override, message):
    from pipeline.__main__ import main

    assert main(["validate", str(write_spec(TINY_SWEEP.replace("max_steps: 6", f"max_steps: 6, {override}")))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_precision_auto_is_bf16_for_gpu_cells_and_fp32_for_cpu_cells(write_spec):
    from pipeline import spec

    cpu = spec.expand(spec.load(write_spec(TINY_SWEEP)))
    gpu = spec.expand(spec.load(write_spec(TINY_SWEEP + "resources: {gpus: 1}\n", "gpu.yaml")))
    assert {c.train.precision for c in cpu} == {"fp32"} and {c.train.precision for c in gpu} == {"bf16"}
    fp16 = spec.expand(spec.load(write_spec(TINY_SWEEP.replace("max_steps: 6", "max_steps: 6, precision: fp16") + "resources: {gpus: 1}\n", "fp16.yaml")))
    assert {c.train.precision for c in fp16} == {"fp16"}


def test_randomized_top_singular_values_match_the_exact_ones():
    from adapters import analysis

    gen = torch.Generator().manual_seed(0)
    decaying = torch.randn(300, 40, generator=gen) @ torch.diag(torch.logspace(0, -3, 40)) @ torch.randn(40, 500, generator=gen)
    for M, rtol in ((decaying, 1e-5), (torch.randn(400, 600, generator=gen), 1e-2)):
        exact = torch.linalg.svdvals(M.double())[:16].float()
        torch.testing.assert_close(analysis.top_singular_values(M, 16, randomized=True), exact, rtol=rtol, atol=0)
        torch.testing.assert_close(analysis.top_singular_values(M, 16), exact)  # on the CPU: the exact route


@pytest.mark.slow  # DeepSpeed engines for seven methods
def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = subprocess.run([sys.executable, "-m", "jobs.gpu_check", "--device", "cpu", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"lora", "dora", "vera", "lr_lora", "lr_lora_fixed", "sine_lora", "lora_shift"}
    assert all(k["ok"] for k in report["kernels"]) and len(report["kernels"]) == 3
    assert report["none"]["dtype"] == "bfloat16" and not report["failures"]
    assert "| lr_lora |" in done.stdout and "all checks passed" in done.stdout
    listed = subprocess.run([sys.executable, "-m", "jobs.gpu_check", "--requirements"], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "deepspeed" in listed.stdout.split()

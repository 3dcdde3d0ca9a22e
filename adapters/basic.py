"""The two reference rows of every table: no adaptation and full fine-tuning."""

from __future__ import annotations

import torch.nn as nn

from adapters.registry import register


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

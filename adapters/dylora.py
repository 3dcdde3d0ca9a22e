"""DyLoRA (Valipour et al. 2023): LoRA trained at a random rank each step, usable at any rank.

Each training step draws b ~ U{1..r} and uses ΔW = (α/b)·B[:, :b]·A[:b]; evaluation, merging
and saving use the full rank b = r. peft has no DyLoRA; it is a LoRA variant whose truncation
rank lives on the layer (`dylora_rank`), drawn by the training loop's `after_backward` hook
for the next step (one draw shared by all layers, as in the paper).
"""

from __future__ import annotations

import random

import torch.nn as nn

from adapters import variants
from adapters.registry import register, register_after_backward


class DyLoraVariant(variants.PeftbenchVariant):
    @staticmethod
    def init(module, adapter_name, config, **kwargs):
        module.dylora_rank = module.r[adapter_name]

    @staticmethod
    def forward(module, active_adapter, x, result, **kwargs):
        r = module.r[active_adapter]
        b = module.dylora_rank if module.training else r
        A, B = module.lora_A[active_adapter].weight[:b], module.lora_B[active_adapter].weight[:, :b]
        scale = module.lora_alpha[active_adapter] / b
        return result + scale * (module.lora_dropout[active_adapter](x) @ A.T @ B.T)


variants.VARIANTS["dylora"] = DyLoraVariant


def set_rank(model: nn.Module, rank: int | None) -> None:
    """Truncate every DyLoRA layer to `rank` for training steps (None: full rank)."""
    for _, layer, adapter in variants.layers(model, "dylora"):
        layer.dylora_rank = rank or layer.r[adapter]


@register_after_backward("dylora")
def draw_rank(model: nn.Module, step: int, total_steps: int) -> None:
    """Draw the next step's rank b ~ U{1..r}, seeded by the step number so runs repeat."""
    set_rank(model, _draw(model, step + 1))


def _draw(model: nn.Module, step: int) -> int:
    r = max(layer.r[adapter] for _, layer, adapter in variants.layers(model, "dylora"))
    return random.Random(step).randint(1, r)


@register("dylora")
def build_dylora(
    model: nn.Module, r: int, lora_alpha: float, lora_dropout: float, target_modules: str | list[str]
) -> nn.Module:
    """DyLoRA: ΔW = (α/b)·B[:, :b]·A[:b], b ~ U{1..r} per training step, b = r at evaluation.

    Trainable parameters: Σ r·(d_in + d_out).
    """
    model = variants.build(model, "dylora", {}, r, lora_alpha, lora_dropout, target_modules)
    set_rank(model, _draw(model, 0))
    return model

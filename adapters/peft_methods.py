"""Methods that `peft` implements: thin config builders, no reimplementation.

`target_modules=None` lets peft pick its per-architecture default; "all-linear" adapts every
linear layer but the output head, the LR-LoRA paper's setting (q,k,v,o,gate,up,down on LLaMA).
"""

from __future__ import annotations

import peft
import torch.nn as nn

from adapters.registry import MethodError, register


def _task_type(model: nn.Module) -> peft.TaskType | None:
    """peft's task type for the backbone, so peft keeps a classifier head trainable."""
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return peft.TaskType.CAUSAL_LM
    if name.endswith("ForSequenceClassification"):
        return peft.TaskType.SEQ_CLS
    return None


def _positive(method: str, **values) -> None:
    for key, value in values.items():
        if value is None or value <= 0:
            raise MethodError(f"method {method!r}: {key} must be positive, got {value!r}")


@register("lora")
def build_lora(
    model: nn.Module,
    r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
) -> nn.Module:
    """LoRA (Hu et al. 2022): ΔW = (α/r)·B·A, B zero at init.

    Trainable parameters: Σ over adapted linears (d_out × d_in) of r·(d_in + d_out).
    """
    _positive("lora", r=r, lora_alpha=lora_alpha)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        task_type=_task_type(model),
    )
    return peft.get_peft_model(model, config)


@register("ia3")
def build_ia3(
    model: nn.Module,
    target_modules: list[str] | None = None,
    feedforward_modules: list[str] | None = None,
) -> nn.Module:
    """IA3 (Liu et al. 2022): learned vectors that rescale keys, values and the FFN input, ones at init.

    Trainable parameters: Σ over adapted linears of d_out (attention) or d_in (feed-forward).
    Defaults are peft's per-architecture targets (LLaMA: k_proj, v_proj, down_proj).
    """
    config = peft.IA3Config(
        target_modules=target_modules,
        feedforward_modules=feedforward_modules,
        task_type=_task_type(model),
    )
    return peft.get_peft_model(model, config)

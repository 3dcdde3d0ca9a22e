"""Gradients and weights where DeepSpeed ZeRO keeps them, for hooks that run between backward and
the optimizer step (AdaLoRA's budgeting, ElaLoRA's prune/expand).

Under ZeRO stages 1–2 the optimizer steps fp32 master copies and writes them back to the
parameters, and stage 2 also moves gradients out of `p.grad` during backward. A hook that
reads `p.grad` would see None, and an in-place edit of `p.data` would be overwritten at the
next step. Outside DeepSpeed (or at stage 0) both functions are plain `p.grad` / no-ops.
Stage 3 partitions the parameters themselves; these hooks do not support it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _managed(p: torch.Tensor) -> bool:
    return hasattr(p, "_hp_mapping") or hasattr(p, "ds_id")


def grad(p: torch.Tensor) -> torch.Tensor | None:
    """p's full gradient, wherever ZeRO holds it."""
    if p.grad is not None or not _managed(p):
        return p.grad
    from deepspeed.utils import safe_get_full_grad

    return safe_get_full_grad(p)


@contextmanager
def visible_grads(params):
    """Within the block every parameter's `.grad` holds its full gradient (for code that reads .grad)."""
    filled = [p for p in params if p.grad is None and _managed(p)]
    for p in filled:
        p.grad = grad(p)
    try:
        yield
    finally:
        for p in filled:
            p.grad = None


def written(params) -> None:
    """Copy in-place edits of `params` into ZeRO's fp32 master weights, so the next step keeps them."""
    managed = [p for p in params if _managed(p)]
    if managed:
        from deepspeed.utils import safe_set_full_fp32_param

        for p in managed:
            safe_set_full_fp32_param(p, p.data)

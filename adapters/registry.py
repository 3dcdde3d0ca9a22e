"""The name -> builder registry behind `adapters.apply` and `adapters.available`.

A builder is a function `build(model, **hparams) -> model` whose keyword arguments are the
method's hyperparameters, with their defaults. The registry checks hyperparameter names
against that signature, so a typo fails with one line naming it instead of being ignored.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


class MethodError(ValueError):
    """An unknown method name or an invalid hyperparameter."""


def register(name: str):
    """Decorator: make `build` available as method `name`."""

    def wrap(build: Callable[..., nn.Module]):
        if name in _BUILDERS:
            raise MethodError(f"method {name!r} is registered twice")
        _BUILDERS[name] = build
        return build

    return wrap


def available() -> list[str]:
    """All registered method names, sorted."""
    return sorted(_BUILDERS)


def hyperparameters(method: str) -> dict[str, object]:
    """The method's hyperparameters and their defaults."""
    params = inspect.signature(_builder(method)).parameters
    return {n: p.default for n, p in params.items() if n != "model"}


def describe(method: str) -> str:
    """The builder's docstring: what the method does and its parameter-count formula."""
    return inspect.getdoc(_builder(method)) or ""


def check(method: str, hparams: dict) -> None:
    """Raise MethodError if `method` is unknown or `hparams` names something it does not take."""
    known = hyperparameters(method)
    for key in hparams:
        if key not in known:
            raise MethodError(
                f"method {method!r} has no hyperparameter {key!r} (it takes: {', '.join(known) or 'none'})"
            )


def apply(model: nn.Module, method: str, **hparams) -> nn.Module:
    """Adapt `model` with `method`; only the method's parameters are left trainable."""
    check(method, hparams)
    model = _builder(method)(model, **hparams)
    model.peftbench_method = {"method": method, "hparams": hparams}  # what `save_adapter` records
    return model


def _builder(method: str) -> Callable[..., nn.Module]:
    try:
        return _BUILDERS[method]
    except KeyError:
        raise MethodError(f"unknown method {method!r} (available: {', '.join(available())})") from None


# Training hooks: a method that needs more than AdamW over its trainable parameters, or work
# between backward and the optimizer step, registers it here. The loop calls `make_optimizer`
# once and `after_backward` after every backward.
_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {}
_AFTER_BACKWARD: dict[str, Callable[..., None]] = {}


def register_optimizer(name: str):
    """Decorator: `make(model, lr, weight_decay, **hparams) -> Optimizer` for method `name`."""

    def wrap(make):
        _OPTIMIZERS[name] = make
        return make

    return wrap


def register_after_backward(name: str):
    """Decorator: `hook(model, step, total_steps)` for method `name`, run after every backward."""

    def wrap(hook):
        _AFTER_BACKWARD[name] = hook
        return hook

    return wrap


def make_optimizer(model: nn.Module, method: str, lr: float, weight_decay: float, hparams: dict | None = None) -> torch.optim.Optimizer:
    """The optimizer `method` trains with: AdamW(0.9, 0.999) over the trainable parameters unless
    the method registered its own (LoRA+ groups, lora_shift's faster shift parameters)."""
    hparams = {**hyperparameters(method), **(hparams or {})}
    if method in _OPTIMIZERS:
        return _OPTIMIZERS[method](model, lr=lr, weight_decay=weight_decay, **hparams)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)


def after_backward(model: nn.Module, method: str, step: int, total_steps: int) -> None:
    """Run `method`'s per-step hook (AdaLoRA's rank allocation, DyLoRA's rank draw, ElaLoRA's
    prune/expand) after backward and before the optimizer step; a no-op for other methods."""
    hook = _AFTER_BACKWARD.get(method)
    if hook is not None:
        hook(model, step, total_steps)

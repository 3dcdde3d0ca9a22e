"""The name -> builder registry behind `adapters.apply`: the worker's side of a method.

A builder is `build(model, **hparams) -> model` whose keyword arguments are exactly the
hyperparameters `adapters.catalog` declares for it (checked when it registers). `apply` resolves
and checks the values against the catalog first, then imports the family module the catalog
names, so no hand-kept list of modules can leave a method out.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch
import torch.nn as nn

from adapters import catalog
from adapters.catalog import MethodError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: make `build` the builder of catalog method `name`."""

    def wrap(build: Callable[..., nn.Module]):
        method = catalog.method(name)
        declared = set(method.defaults())
        takes, opens = takes_hparams(build)
        if takes != declared or opens != (method.open_fields is not None):
            more = " and any others" if method.open_fields else ""
            raise MethodError(f"builder of {name!r} takes {sorted(takes)}{' and **kwargs' if opens else ''} but adapters.catalog declares {sorted(declared)}{more}")
        if name in _BUILDERS:
            raise MethodError(f"method {name!r} is registered twice")
        _BUILDERS[name] = build
        return build

    return wrap


def takes_hparams(build: Callable[..., nn.Module]) -> tuple[set[str], bool]:
    """(the named hyperparameters `build` takes, whether it takes any others as **kwargs)."""
    params = inspect.signature(build).parameters.values()
    named = {p.name for p in params if p.name != "model" and p.kind is not p.VAR_KEYWORD}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def builder(method: str) -> Callable[..., nn.Module]:
    """The registered builder of `method`, importing the family module the catalog names."""
    if method not in _BUILDERS:
        importlib.import_module(catalog.method(method).module)
    return _BUILDERS[method]


def describe(method: str) -> str:
    """The builder's docstring: what the method does and its parameter-count formula."""
    return inspect.getdoc(builder(method)) or ""


def apply(model: nn.Module, method: str, **hparams) -> nn.Module:
    """Adapt `model` with `method`; only the method's parameters are left trainable."""
    values = catalog.resolve(method, hparams)
    model = builder(method)(model, **values)
    model.peftbench_method = {"method": method, "hparams": hparams}  # what `save_adapter` records
    return model


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
    builder(method)  # its module registers its hooks
    if method in _OPTIMIZERS:
        return _OPTIMIZERS[method](model, lr=lr, weight_decay=weight_decay, **catalog.resolve(method, hparams or {}))
    return adamw(model, lr, weight_decay)


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW(0.9, 0.999) over the trainable parameters: the optimizer of every method that registers none."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)


def after_backward(model: nn.Module, method: str, step: int, total_steps: int) -> None:
    """Run `method`'s per-step hook (AdaLoRA's rank allocation, DyLoRA's rank draw, ElaLoRA's
    prune/expand; a `peft` row's by its peft type) after backward and before the optimizer step; a no-op for other methods."""
    hook = _AFTER_BACKWARD.get(method)
    if hook is not None:
        hook(model, step, total_steps)

"""The name -> builder registry behind `adapters.apply` and `adapters.available`.

A builder is a function `build(model, **hparams) -> model` whose keyword arguments are the
method's hyperparameters, with their defaults. The registry checks hyperparameter names
against that signature, so a typo fails with one line naming it instead of being ignored.
"""

from __future__ import annotations

import inspect
from typing import Callable

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
    return _builder(method)(model, **hparams)


def _builder(method: str) -> Callable[..., nn.Module]:
    try:
        return _BUILDERS[method]
    except KeyError:
        raise MethodError(f"unknown method {method!r} (available: {', '.join(available())})") from None

"""PEFT methods by name: `available()` lists them, `apply(model, method, **hparams)` builds one.

Each method is a builder registered in `adapters.registry`; the modules imported below hold
the builders (one module per method family). Methods that `peft` implements are thin config
builders over `peft`; the rest are our own small modules.
"""

from adapters.registry import MethodError, apply, available, describe

# Importing a family module registers its methods.
from adapters import basic, peft_methods  # noqa: F401,E402

__all__ = ["MethodError", "apply", "available", "describe"]

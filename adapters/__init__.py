"""PEFT methods by name: `available()` lists them, `apply(model, method, **hparams)` builds one.

Two halves, so that checking a sweep file never imports torch:
- `adapters.catalog` declares every method's hyperparameters as data (kinds, defaults, help,
  checks); `available`, `hyperparameters` and `MethodError` come from it.
- `adapters.registry` maps a name to its builder in a family module (one module per method
  family; methods `peft` implements are thin config builders over it, our LoRA-shaped ones are
  peft LoRA variants, see `adapters.variants`). It, and everything below that imports torch, is
  loaded on first use of the names in `_WORKER`.

The training loop's integration points:
- `make_optimizer(model, method, lr, weight_decay, hparams)`: the optimizer to train with
  (AdamW over the trainable parameters unless the method needs its own, e.g. LoRA+).
- `after_backward(model, method, step, total_steps)`: call after every backward, before the
  optimizer step (AdaLoRA's `update_and_allocate`, DyLoRA's rank draw, ElaLoRA's prune/expand).
- `save_adapter(model, path)` / `load_adapter(base_model, path)`: any method's trained state,
  our own peft config classes rebuilt on load.

Also: `adapters.analysis.analyze(model)` (stable rank, spectrum, φ curves, shift maps per
adapted module) and `python -m adapters.bench [--quick]` (time and memory against LoRA).
"""

import importlib

from adapters.catalog import MethodError, available, hyperparameters

# The worker's names, imported from their module when first used (they import torch and peft).
_WORKER = {
    "apply": "adapters.registry",
    "after_backward": "adapters.registry",
    "describe": "adapters.registry",
    "make_optimizer": "adapters.registry",
    "save_adapter": "adapters.persist",
    "load_adapter": "adapters.persist",
}

__all__ = ["MethodError", "available", "hyperparameters", *_WORKER]


def __getattr__(name: str):
    if name in _WORKER:
        return getattr(importlib.import_module(_WORKER[name]), name)
    raise AttributeError(f"module 'adapters' has no attribute {name!r}")

"""PEFT methods by name: `available()` lists them, `apply(model, method, **hparams)` builds one.

Each method is a builder registered in `adapters.registry`; the modules imported below hold
the builders (one module per method family). Methods that `peft` implements are thin config
builders over `peft`; the rest are our own small modules (LoRA-shaped ones as peft LoRA
variants, see `adapters.variants`).

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

from adapters.registry import MethodError, after_backward, apply, available, describe, hyperparameters, make_optimizer

# Importing a family module registers its methods.
from adapters import basic, bottleneck, dylora, elalora, elementwise, nola, peft_methods, shift  # noqa: F401,E402
from adapters.persist import load_adapter, save_adapter  # noqa: E402

__all__ = [
    "MethodError", "after_backward", "apply", "available", "describe", "hyperparameters", "load_adapter",
    "make_optimizer", "save_adapter",
]

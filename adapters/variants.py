"""Our LoRA-shaped methods as peft LoRA variants: one config field, one layer, a variant per method.

peft has no public way to add a LoRA variant, so this uses its documented-private extension
points (pinned peft==0.21.2, see /work/shared/ENVIRONMENT.md):

- `PeftbenchLoraConfig` is a `LoraConfig` with `peftbench_variant` (the method name) and
  `peftbench_options` (that method's own settings). Both are saved in adapter_config.json.
- `VariantLinear` is peft's LoRA `Linear` that resolves the variant from that field, lets a
  variant define the dense ΔW (merge, unmerge, analysis) and take over the whole forward
  (the memory-bounded merged linear of the elementwise family).
- `VARIANTS` maps a method name to its `LoraVariant`; family modules fill it.

Why variants and not copies of LoRA: lora_A/lora_B, scaling, dropout, targeting, saving and
merging stay peft's; a method adds only its own parameters and math.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import peft
import torch
import torch.nn as nn
from peft.tuners.lora.layer import Linear, LoraVariant

from adapters.peft_methods import task_type

VARIANTS: dict[str, type["PeftbenchVariant"]] = {}


@dataclass
class PeftbenchLoraConfig(peft.LoraConfig):
    peftbench_variant: str | None = field(
        default=None, metadata={"is_lora_variant": True, "help": "peftbench method name (lr_lora, lora_shift, ...)"}
    )
    peftbench_options: dict = field(default_factory=dict, metadata={"help": "the method's own settings"})


class PeftbenchVariant(LoraVariant):
    """A variant whose ΔW is `delta_weight(module, adapter)`; merge adds it, unmerge subtracts it.

    By default ΔW = B'·A' from `factors` (LoRA's s·B, A unless a variant says otherwise), the
    form adapters.analysis takes its exact small-core route on.
    """

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def factors(module: Linear, adapter: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        return module.scaling[adapter] * module.lora_B[adapter].weight, module.lora_A[adapter].weight

    @classmethod
    def delta_weight(cls, module: Linear, adapter: str) -> torch.Tensor:
        with torch.no_grad():
            B, A = cls.factors(module, adapter)
            return B @ A

    @classmethod
    def merge_safe(cls, module, active_adapter, orig_weight):
        return orig_weight + cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def merge_unsafe(cls, module, active_adapter, orig_weight):
        orig_weight.data += cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def unmerge(cls, module, active_adapter, orig_weight):
        return orig_weight - cls.delta_weight(module, active_adapter).to(orig_weight.dtype)


def add_container(module: Linear, name: str) -> nn.ModuleDict:
    """The per-adapter ModuleDict `name` on `module`, registered so peft trains and saves it.

    The name must start with "lora_": peft keeps only such keys in the adapter state dict.
    """
    if not hasattr(module, name):
        setattr(module, name, nn.ModuleDict())
        module.adapter_layer_names = module.adapter_layer_names[:] + (name,)
    return getattr(module, name)


class VariantLinear(Linear):
    """peft's LoRA Linear, resolving `peftbench_variant` to one of our variants."""

    def resolve_lora_variant(self, *, config, **kwargs):
        name = getattr(config, "peftbench_variant", None)
        if name:
            return VARIANTS[name]()
        return super().resolve_lora_variant(config=config, **kwargs)

    def get_delta_weight(self, adapter) -> torch.Tensor:
        variant = self.lora_variant.get(adapter)
        if isinstance(variant, PeftbenchVariant):
            return variant.delta_weight(self, adapter)
        return super().get_delta_weight(adapter)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # A variant may compute base and update in one op (see adapters.elementwise); only for
        # the plain case: one active adapter, not merged, no per-sample adapter names.
        if not (self.disable_adapters or self.merged or args or kwargs) and len(self.active_adapters) == 1:
            adapter = self.active_adapters[0]
            take_over = getattr(self.lora_variant.get(adapter), "forward_whole", None)
            if take_over is not None and isinstance(self.lora_dropout[adapter], nn.Identity):
                return take_over(self, adapter, x)
        return super().forward(x, *args, **kwargs)


def build(
    model: nn.Module,
    method: str,
    options: dict,
    r: int,
    lora_alpha: float,
    lora_dropout: float,
    target_modules,
    **lora_settings,
) -> peft.PeftModel:
    """`model` with the LoRA variant `method` on `target_modules` (peft does targeting and saving)."""
    config = PeftbenchLoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        task_type=task_type(model),
        peftbench_variant=method,
        peftbench_options=options,
        **lora_settings,
    )
    config._register_custom_module({nn.Linear: VariantLinear})
    return peft.get_peft_model(model, config)


def load_config(path: str | Path) -> PeftbenchLoraConfig | None:
    """Our config class rebuilt from a saved adapter_config.json, or None if it is not ours.

    peft's `from_pretrained` would read a plain LoraConfig and drop our fields.
    """
    if not json.loads((Path(path) / "adapter_config.json").read_text()).get("peftbench_variant"):
        return None
    config = saved_config(path, PeftbenchLoraConfig)
    config._register_custom_module({nn.Linear: VariantLinear})
    return config


def saved_config(path: str | Path, cls: type[peft.LoraConfig]) -> peft.LoraConfig:
    """The `cls` config saved under `path`; its `peft_type` is not read (`adapters.persist` puts a
    marker there that peft's own loaders refuse)."""
    saved = json.loads((Path(path) / "adapter_config.json").read_text())
    names = {f.name for f in fields(cls) if f.init} - {"peft_type"}
    return cls(**{k: v for k, v in saved.items() if k in names})


def layers(model: nn.Module, method: str | None = None):
    """(name, layer, adapter) for every LoRA layer of `model` carrying our variant `method`."""
    for name, module in model.named_modules():
        if isinstance(module, VariantLinear):
            for adapter, variant in module.lora_variant.items():
                if method is None or type(variant) is VARIANTS.get(method):
                    yield name, module, adapter

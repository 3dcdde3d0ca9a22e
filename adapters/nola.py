"""NoLA (Koohpayegani et al. 2024): LoRA whose factors are mixtures of frozen random bases.

A = Σ_i α_i A_i, B = Σ_j β_j B_j, ΔW = s·B·A. Only α, β train; the bases are regenerated from
a seed (config seed + CRC of the module's name), so they are neither trained nor saved.
β = 0 at init, so B = 0 and ΔW = 0.

peft has no NoLA; it is a LoRA variant whose lora_A / lora_B are `BasisMixture` modules, so
peft's own LoRA forward, merge and saving apply unchanged.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from adapters import variants
from adapters.registry import register


class BasisMixture(nn.Module):
    """A linear map whose weight is Σ_i coef_i · basis_i over n frozen seeded random bases."""

    def __init__(self, n: int, out_features: int, in_features: int, seed: int, zero: bool):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        bases = torch.randn(n, out_features, in_features, generator=gen) / in_features**0.5
        self.register_buffer("bases", bases, persistent=False)
        coef = torch.zeros(n) if zero else (torch.rand(n, generator=gen) * 2 - 1) / n**0.5
        self.coef = nn.Parameter(coef)

    @property
    def weight(self) -> torch.Tensor:
        return torch.tensordot(self.coef, self.bases, dims=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class NolaVariant(variants.PeftbenchVariant):
    @staticmethod
    def init(module, adapter_name, config, target_name="", **kwargs):
        opts = config.peftbench_options
        seed = opts["seed"] * 1_000_003 + zlib.crc32(target_name.encode())
        device = module.lora_A[adapter_name].weight.device
        r = module.r[adapter_name]
        module.lora_A[adapter_name] = BasisMixture(opts["num_basis_a"], r, module.in_features, seed, zero=False).to(device)
        module.lora_B[adapter_name] = BasisMixture(opts["num_basis_b"], module.out_features, r, seed + 1, zero=True).to(device)

    @staticmethod
    def forward(module, active_adapter, x, result, **kwargs):
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        return result + module.scaling[active_adapter] * lora_B(lora_A(module.lora_dropout[active_adapter](x)))


variants.VARIANTS["nola"] = NolaVariant


@register("nola")
def build_nola(
    model: nn.Module,
    r: int,
    lora_alpha: float,
    lora_dropout: float,
    target_modules: str | list[str],
    num_basis_a: int,
    num_basis_b: int,
    seed: int,
) -> nn.Module:
    """NoLA: ΔW = s·(Σ β_j B_j)(Σ α_i A_i) over seeded frozen random bases; β = 0 at init.

    The bases cost num_basis·r·(d_in or d_out) floats of memory per adapted linear, not trained.
    Trainable parameters: (num_basis_a + num_basis_b) per adapted linear.
    """
    options = dict(num_basis_a=num_basis_a, num_basis_b=num_basis_b, seed=seed)
    return variants.build(model, "nola", options, r, lora_alpha, lora_dropout, target_modules)

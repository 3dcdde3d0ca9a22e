"""LoRA-SHIFT: ΔW = s · (S ⊙ B·A) with a learned modulation S ∈ R^{d×k}.

Every S here is a short sum of row × column products, S = Σ_m p_m q_mᵀ, so the forward never
builds a d×k matrix: (p qᵀ ⊙ BA) x = (diag(p)·B)(A·diag(q)) x, and stacking the m terms gives
one LoRA pass of rank m·r through [p_1 ⊙ B, …]·[A ⊙ q_1; …]: LoRA's memory, no pass over
tokens × width beyond LoRA's. Row coordinate u_i = 2i/(d−1) − 1, column coordinate v_j = 2j/(k−1) − 1.

- `linear`: S = 1 + θ1·u1ᵀ + θ2·1vᵀ = (1 + θ1 u)1ᵀ + 1(θ2 v)ᵀ; θ = 0 at init.
- `cyclic`: S = 1 + α·sin(2πθ·pos/d). pos = i·k + j (default) splits by the addition formula
  into 1 + α sin(φ_i)cos(ψ_j) + α cos(φ_i)sin(ψ_j), φ_i = 2πθ·ik/d, ψ_j = 2πθ·j/d;
  `pos: row` (pos = i) is a per-row scale. α = 0, θ = 1 at init.
- `learned`: S = 1 + tanh(ρ)1ᵀ + 1 tanh(κ)ᵀ, ρ_i = w_rᵀγ(u_i) + b_r, κ_j = w_cᵀγ(v_j) + b_c,
  γ a fixed Fourier encoding with shift_dim features; w = b = 0 at init (S = 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from adapters import variants
from adapters.registry import register, register_optimizer


def _coords(n: int) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)


def fourier_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """γ(t) = [sin(π f t), cos(π f t)] for f = 1..dim/2: a fixed basis of smooth functions on [−1, 1]."""
    freqs = torch.arange(1, dim // 2 + 1, dtype=t.dtype)
    angles = math.pi * t[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ShiftModulation(nn.Module):
    """S for one adapted d×k matrix, as the separable terms [(p_m, q_m)]."""

    def __init__(self, shift: str, d: int, k: int, shift_dim: int, pos: str):
        super().__init__()
        self.shift, self.pos, self.d, self.k = shift, pos, d, k
        self.register_buffer("u", _coords(d), persistent=False)
        self.register_buffer("v", _coords(k), persistent=False)
        if shift == "linear":
            self.theta = nn.Parameter(torch.zeros(2))
        elif shift == "cyclic":
            self.alpha = nn.Parameter(torch.zeros(1))
            self.theta = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("gamma_u", fourier_features(self.u, shift_dim), persistent=False)
            self.register_buffer("gamma_v", fourier_features(self.v, shift_dim), persistent=False)
            self.w = nn.Parameter(torch.zeros(2, shift_dim))  # rows, columns
            self.b = nn.Parameter(torch.zeros(2))

    def terms(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ones_d, ones_k = torch.ones_like(self.u), torch.ones_like(self.v)
        if self.shift == "linear":
            return [(1 + self.theta[0] * self.u, ones_k), (ones_d, self.theta[1] * self.v)]
        if self.shift == "cyclic":
            i = torch.arange(self.d, dtype=self.u.dtype, device=self.u.device)
            if self.pos == "row":
                return [(1 + self.alpha * torch.sin(2 * math.pi * self.theta * i / self.d), ones_k)]
            j = torch.arange(self.k, dtype=self.v.dtype, device=self.v.device)
            rows = 2 * math.pi * self.theta * i * self.k / self.d
            cols = 2 * math.pi * self.theta * j / self.d
            return [(ones_d, ones_k), (self.alpha * rows.sin(), cols.cos()), (self.alpha * rows.cos(), cols.sin())]
        rho = self.gamma_u @ self.w[0] + self.b[0]
        kappa = self.gamma_v @ self.w[1] + self.b[1]
        return [(1 + torch.tanh(rho), ones_k), (ones_d, torch.tanh(kappa))]

    def dense(self) -> torch.Tensor:
        """S itself (d×k), for merging and analysis."""
        return sum(torch.outer(p, q) for p, q in self.terms())


class ShiftVariant(variants.PeftbenchVariant):
    @staticmethod
    def init(module, adapter_name, config, **kwargs):
        opts = config.peftbench_options
        mod = ShiftModulation(opts["shift"], module.out_features, module.in_features, opts["shift_dim"], opts["pos"])
        variants.add_container(module, "lora_shift")[adapter_name] = mod.to(module.lora_A[adapter_name].weight.device)

    @staticmethod
    def factors(module, adapter):
        """ΔW = s·Σ_m diag(p_m)·B·A·diag(q_m) = [s·p_1 ⊙ B, …]·[A ⊙ q_1; …]: rank ≤ m·r, exact."""
        A, B = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        terms = module.lora_shift[adapter].terms()
        s = module.scaling[adapter]
        return torch.cat([s * p[:, None] * B for p, _ in terms], 1), torch.cat([A * q for _, q in terms], 0)

    @staticmethod
    def forward(module, active_adapter, x, result, **kwargs):
        """One rank-m·r pass through the stacked factors: no elementwise pass over tokens × width."""
        B, A = ShiftVariant.factors(module, active_adapter)
        return result + F.linear(F.linear(module.lora_dropout[active_adapter](x), A), B)


variants.VARIANTS["lora_shift"] = ShiftVariant


@register("lora_shift")
def build_lora_shift(
    model: nn.Module,
    shift: str,
    r: int,
    lora_alpha: float,
    lora_dropout: float,
    target_modules: str | list[str],
    shift_dim: int,
    pos: str,
    shift_lr_ratio: float,
) -> nn.Module:
    """LoRA-SHIFT: ΔW = s·(S ⊙ B·A), S = 1 at init (so ΔW = 0: B = 0). Paper: r 8, α 16, shift lr 2×.

    Trainable parameters: Σ r·(d_in + d_out) + per adapted linear 2 (linear, cyclic) or
    2·shift_dim + 2 (learned).
    """
    options = dict(shift=shift, shift_dim=shift_dim, pos=pos)
    return variants.build(model, "lora_shift", options, r, lora_alpha, lora_dropout, target_modules)


@register_optimizer("lora_shift")
def lora_shift_optimizer(model, lr: float, weight_decay: float, shift_lr_ratio: float, **_) -> torch.optim.Optimizer:
    """AdamW with the shift parameters at lr × shift_lr_ratio (the paper's 2×)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if ".lora_shift." not in n], "lr": lr},
        {"params": [p for n, p in named if ".lora_shift." in n], "lr": lr * shift_lr_ratio},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)

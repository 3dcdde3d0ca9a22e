"""Diagnostics per adapted module: stable rank and spectrum of ΔW, and each method's own curve.

srank(M) = ‖M‖_F² / ‖M‖_2², the LR-LoRA paper's central figure. Factored updates ΔW = B'·A'
(LoRA, AdaLoRA, NoLA, DyLoRA, ElaLoRA, and LoRA-SHIFT as a sum of m rank-r products) take the
exact route: B' = Q_B R_B, A'ᵀ = Q_A R_A, so ΔW = Q_B (R_B R_Aᵀ) Q_Aᵀ has the singular values of
the small core R_B R_Aᵀ. Dense updates (the elementwise family) use power iteration for
‖·‖_2 (a few matrix-vector products, no SVD of a d×k matrix) and svdvals for the spectrum.
Any other peft layer over a linear (DoRA and the other LoRA variants, VeRA, RandLoRA, IA3, ...)
is linear in x, so its ΔW is read off its own forward on the identity: every layout peft has or
adds is covered without knowing its parameters.

Everything is computed on the model's device. With `top=k` (what the logged diagnostics keep), a
dense ΔW on an accelerator larger than 4k on its short side gets its k leading singular values
from a randomised SVD (`torch.svd_lowrank`, 3k columns, 6 power iterations: within about 0.2%
of the exact values on a flat Gaussian spectrum, exact to rounding on a decaying one) instead of
a full SVD; on the CPU, and without `top`, the spectrum is exact.

PiSSA's report is s·B·A, the part of W its adapter holds (W0's top-r part plus what training
changed): its change from W0 alone would need W0, which its residual base no longer holds.

For `lr_lora` (paper reading) ΔW carries the dense constant φ(0)·11ᵀ once a ≠ 0, which
dominates srank at small |Z|; so also srank(φ(s·Z) − φ(0)) (METHODS.md risk 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from peft.tuners.adalora.layer import AdaLoraLayer
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from adapters import elementwise, shift, variants


@dataclass
class ModuleReport:
    name: str
    shape: tuple[int, int]  # (d_out, d_in)
    stable_rank: float
    spectrum: torch.Tensor  # singular values of ΔW, descending (the non-zero part for factored updates)
    phi_curve: tuple[torch.Tensor, torch.Tensor] | None = None  # (z, φ(z)) for lr_lora*
    shift_map: torch.Tensor | None = None  # S (d_out × d_in) for lora_shift
    stable_rank_centered: float | None = None  # srank(φ(s·Z) − φ(0)) for paper lr_lora


def factored_spectrum(B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Singular values of B·A (B: d×q, A: q×k) from the q×q core of two QRs; exact, O((d + k)q²)."""
    _, R_B = torch.linalg.qr(B.double())
    _, R_A = torch.linalg.qr(A.double().T)
    return torch.linalg.svdvals(R_B @ R_A.T).to(B.dtype)


def spectral_norm(M: torch.Tensor, iters: int = 200, tol: float = 1e-9, seed: int = 0) -> float:
    """‖M‖_2 by power iteration on MᵀM from a seeded random start (stops at relative change < tol)."""
    M = M.double()
    v = torch.randn(M.shape[1], generator=torch.Generator().manual_seed(seed), dtype=M.dtype).to(M.device)  # same start on every device
    sigma = 0.0
    for _ in range(iters):
        w = M.T @ (M @ v)
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0
        v = w / norm
        new = norm**0.5
        if abs(new - sigma) <= tol * new:
            return new
        sigma = new
    return sigma


def stable_rank(M: torch.Tensor) -> float:
    """‖M‖_F² / ‖M‖_2² of a dense matrix (power iteration for the 2-norm); 0 for M = 0."""
    top = spectral_norm(M)
    return float(M.double().norm() ** 2 / top**2) if top else 0.0


def top_singular_values(M: torch.Tensor, k: int | None = None, randomized: bool | None = None) -> torch.Tensor:
    """The k leading singular values of M, descending (all of them when k is None), in float32.
    `randomized` (default: M is on an accelerator and its short side exceeds 4k) takes them from
    a randomised SVD on M's device; otherwise a full float64 SVD."""
    if randomized is None:
        randomized = k is not None and M.device.type != "cpu" and min(M.shape) > 4 * k
    if not randomized:
        return torch.linalg.svdvals(M.double())[:k].float()
    state = torch.random.get_rng_state()  # seeded, and the caller's random stream left as it was
    torch.manual_seed(0)
    try:
        return torch.svd_lowrank(M.double(), q=min(3 * k, *M.shape), niter=6)[1][:k].float()
    finally:
        torch.random.set_rng_state(state)


def _srank_of(sv: torch.Tensor) -> float:
    return float((sv.double() ** 2).sum() / sv.double().max() ** 2) if sv.numel() and sv.max() > 0 else 0.0


def analyze(model: nn.Module, curves_only: bool = False, top: int | None = None) -> list[ModuleReport]:
    """One report per adapted linear of `model` (its active adapter): every peft tuner layer
    whose base is an nn.Linear, whatever the method.

    `curves_only` computes just the φ curves and shift maps (stable_rank NaN, spectrum empty):
    cheap enough for snapshots during training, where ΔW's SVDs would stall every module.
    `top` keeps only the leading singular values of each spectrum (see top_singular_values).
    """
    reports = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, BaseTunerLayer) and module.active_adapters and isinstance(module.get_base_layer(), nn.Linear):
                reports.append(_report(name, module, module.active_adapters[0], curves_only, top))
    return reports


def _report(name: str, module: BaseTunerLayer, adapter: str, curves_only: bool, top: int | None) -> ModuleReport:
    base = module.get_base_layer()
    shape = (base.out_features, base.in_features)
    variant = module.lora_variant.get(adapter) if isinstance(module, LoraLayer) else None
    if isinstance(variant, elementwise.ElementwiseVariant):
        return _elementwise_report(name, shape, module, adapter, curves_only, top)
    if curves_only:
        report = ModuleReport(name, shape, float("nan"), torch.empty(0))
    elif (factors := _factors(module, adapter, variant)) is not None:
        sv = factored_spectrum(*factors)
        report = ModuleReport(name, shape, _srank_of(sv), sv[:top])
    else:
        delta = probed_delta(module)
        report = ModuleReport(name, shape, stable_rank(delta), top_singular_values(delta, top))
    if isinstance(variant, shift.ShiftVariant):
        report.shift_map = module.lora_shift[adapter].dense()
    return report


def _factors(module: BaseTunerLayer, adapter: str, variant) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(B', A') with ΔW = B'·A' for the factored layouts, None for any other."""
    if isinstance(variant, variants.PeftbenchVariant):
        return variant.factors(module, adapter)
    if isinstance(module, AdaLoraLayer):  # peft's get_delta_weight: B·(A ⊙ E)·s/(ranknum + 1e-5)
        scale = module.scaling[adapter] / (module.ranknum[adapter] + 1e-5)
        return module.lora_B[adapter] * scale, module.lora_A[adapter] * module.lora_E[adapter]
    if isinstance(module, LoraLayer) and variant is None and adapter in module.lora_A:  # ΔW = s·B·A
        return module.scaling[adapter] * module.lora_B[adapter].weight, module.lora_A[adapter].weight
    return None


def probed_delta(module: nn.Module) -> torch.Tensor:
    """ΔW (d_out × d_in) of an adapted linear layer, from its forward in eval mode:
    (layer(I) − layer(0)) − (base(I) − base(0)), transposed; biases cancel, active adapters summed."""
    base = module.get_base_layer()
    eye = torch.eye(base.in_features, dtype=base.weight.dtype, device=base.weight.device)
    zero = torch.zeros_like(eye[:1])
    training = module.training
    module.eval()
    try:
        return ((module(eye) - module(zero)) - (base(eye) - base(zero))).T
    finally:
        module.train(training)


def _elementwise_report(name, shape, module, adapter, curves_only: bool, top: int | None) -> ModuleReport:
    A, B, phi, (s_in, s_out), params = elementwise.ElementwiseVariant._args(module, adapter)
    if curves_only:
        report = ModuleReport(name, shape, float("nan"), torch.empty(0))
    else:
        delta = elementwise.delta_weight(A, B, phi, params, s_in, s_out)
        report = ModuleReport(name, shape, stable_rank(delta), top_singular_values(delta, top))
    if isinstance(phi, elementwise.SincPhi):
        limit = float(phi.grid.abs().max())
        z = torch.linspace(-limit, limit, 201, device=phi.grid.device, dtype=params[0].dtype)
        report.phi_curve = (z, phi.value(z, *params))
        if phi.reading == "paper" and not curves_only:
            report.stable_rank_centered = stable_rank(delta - s_out * phi.value(torch.zeros_like(z[:1]), *params))
    return report

"""Updates that are an elementwise function of BA: LR-LoRA (paper and fixed readings), SineLoRA.

ΔW = out · φ(in · Z), Z = B·A, with (in, out, φ) per method:

- `lr_lora` (paper): φ(z) = Σ_g a_g sinc(b_g (z − c_g)) [+ z if residual], in = s, out = 1
  (`scale_position: outside`: in = 1, out = s). a = 0 at init, so φ ≡ 0 and ΔW = 0.
- `lr_lora_fixed`: φ̃(z) = f(z) − f(0), in = s/ρ, out = ρ, ρ = RMS(s·Z) detached and floored;
  b starts at the Shannon value (G − 1)/(2L) and a_g = c_g, so f interpolates the identity on
  the grid: ΔW ≈ s·Z from step 0 and B, A get LoRA's gradients (METHODS.md, risks 1–4).
- `sine_lora`: φ = sin, in = ω, out = s/√k (Ji et al. 2025).

Because φ is not affine, ∂L/∂Z needs the dense G = ∂L/∂ΔW = Σ_t δ_t x_tᵀ: one more GEMM per
step than LoRA. `MergedElementwiseLinear` is the memory-bounded implementation of
METHODS.md: one autograd Function over y = x·(W0 + ΔW)ᵀ + bias that saves only x, A, B and
φ's parameters and walks Z in row blocks. Forward: W0 + ΔW, one GEMM. Backward: G, then one
pass per row block gives W0 + ΔW again (for ∂x), dZ = in·out·G ⊙ φ′ and φ's parameter sums,
all from one sin and one cos per element and grid point. Temporaries: two d×k scratch buffers
per thread (G, and Z turned into W0 + ΔW), kept between calls and sized to the largest layer
because fresh d×k allocations every call cost page faults (the torch path adds 2 × G ×
GRAD_CHUNK_ELEMENTS sin/cos values); nothing of size G×d×k, no d×k values kept from forward
to backward.

The per-block passes run as C on CPU float32 (elementwise_kernels.c, built at first use with
the system compiler, OpenMP over torch's threads, sin πt and cos πt from one shared range
reduction); elsewhere (float64, other devices) as torch ops, torch.compile'd; all of it eager
torch with PEFTBENCH_COMPILE=0. Cost against LoRA: `python -m adapters.bench`.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from adapters import variants
from adapters.registry import register

BLOCK_ELEMENTS = 2**18  # elements of one row block of Z (forward; GEMMs of the backward)
GRAD_CHUNK_ELEMENTS = 2**13  # torch path: elements per sin/cos buffer of the backward (2 × G × this floats)
GRID_CHUNK = 8  # eager torch path: grid points per pass (compiled: the whole grid)
# Native C kernels on CPU float32, torch.compile'd sinc kernels elsewhere (PEFTBENCH_COMPILE=0:
# eager torch ops everywhere, for tests and float64 gradchecks)
COMPILE = os.environ.get("PEFTBENCH_COMPILE", "1") == "1"
TAYLOR_BELOW = 0.1  # |t| under which sinc′ uses its Taylor series (w/t cancels in fp32)
NATIVE_MAX_GRID = 1024  # the native sinc kernel keeps 2 × G vectors of partial sums on its stack
PART_MIN_ELEMENTS = 2**12  # a native call uses one thread per this many elements at most


def _row_blocks(d: int, k: int):
    rows = max(1, BLOCK_ELEMENTS // k)
    for start in range(0, d, rows):
        yield slice(start, min(d, start + rows))


def sinc_prime(t: torch.Tensor, cos_minus_sinc: torch.Tensor) -> torch.Tensor:
    """d/dt sinc(t) = (cos πt − sinc t)/t; for |t| < 0.1 its series Σ_n (−1)ⁿ 2n π²ⁿ t²ⁿ⁻¹/(2n+1)!,
    n = 1..4 (truncation below 1e-10 relative there; the quotient would lose ~1e-7/|t| in fp32)."""
    t2 = t * t
    p2 = math.pi**2
    series = t * (-p2 / 3 + t2 * (p2**2 / 30 + t2 * (-(p2**3) / 840 + t2 * p2**4 / 45360)))
    small = t.abs() < TAYLOR_BELOW
    return torch.where(small, series, cos_minus_sinc / torch.where(small, torch.ones_like(t), t))


def sinc_sum(u, a, b, c):
    """Σ_g a_g sinc(b_g (u − c_g)) over a grid chunk, u flat (n,)."""
    return (a[:, None] * torch.sinc(b[:, None] * (u - c[:, None]))).sum(0)


def sinc_grad_terms(u, a, b, c):
    """(sinc t_g, w_g, Σ_g a_g b_g sinc′(t_g)) with t_g = b_g (u − c_g), w_g = cos πt_g − sinc t_g.

    The backward needs sums over the grid (φ = Σ a·s, φ′) and over elements (∂a = s·g,
    ∂β ∝ w·g) of the same sin and cos values; returning s and w for a small chunk of u evaluates
    each sin and cos once. sinc′ = w/t, by its series near 0 (see sinc_prime).
    """
    t = b[:, None] * (u - c[:, None])
    pt = math.pi * t
    nonzero = torch.where(t == 0, torch.ones_like(pt), pt)
    s = torch.where(t == 0, torch.ones_like(pt), torch.sin(pt) / nonzero)
    w = torch.cos(pt) - s
    return s, w, ((a * b)[:, None] * sinc_prime(t, w)).sum(0)


@functools.cache
def _compiled_kernels():
    return tuple(torch.compile(f, dynamic=True) for f in (sinc_sum, sinc_grad_terms))


def _kernels():
    """(sinc_sum, sinc_grad_terms) of the torch path, compiled when COMPILE: inductor fuses each
    into one pass (sinc_sum reduces over the grid without a G×n buffer)."""
    return _compiled_kernels() if COMPILE else (sinc_sum, sinc_grad_terms)


def _grid_chunks(size: int):
    step = size if COMPILE else GRID_CHUNK  # eager: G×n temporaries would exceed the memory bound
    return [slice(g, g + step) for g in range(0, size, step)]


@functools.cache
def _native_library():
    """elementwise_kernels.c built with the system C compiler ($CC, else cc) and loaded, once per
    process; None (with a warning) where it cannot be built: the torch path runs instead."""
    source = Path(__file__).with_name("elementwise_kernels.c")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            library = Path(tmp) / "elementwise_kernels.so"
            command = [os.environ.get("CC", "cc"), "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(source), "-o", str(library)]
            subprocess.run(command, check=True, capture_output=True, text=True)
            lib = ctypes.CDLL(str(library))  # mapped: the file may go
    except (OSError, subprocess.CalledProcessError) as err:
        warnings.warn(f"adapters.elementwise: native kernels unavailable ({getattr(err, 'stderr', '') or err}); using torch ops")
        return None
    P, L, I, F32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
    lib.sinc_forward.argtypes = [I, L, P, P, P, F32, F32, L, P, P, P, I, F32]
    lib.sinc_backward.argtypes = [I, L, P, P, P, P, P, F32, F32, L, P, P, P, I, F32, P, P]
    lib.sine_forward.argtypes = [I, L, P, P, P, F32, F32]
    lib.sine_backward.argtypes = [I, L, P, P, P, P, P, F32, F32]
    return lib


def _native(z: torch.Tensor, phi: nn.Module):
    """The native kernels if they apply to φ on blocks like z (COMPILE, CPU, float32), else None."""
    if not (COMPILE and z.device.type == "cpu" and z.dtype == torch.float32):
        return None
    if isinstance(phi, SincPhi) and len(phi.grid) > NATIVE_MAX_GRID:
        return None
    return _native_library()


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _threads(n: int) -> int:
    """OpenMP threads for a native call over n elements: torch's count, fewer for small calls."""
    return max(1, min(torch.get_num_threads(), n // PART_MIN_ELEMENTS))


class SincPhi(nn.Module):
    """φ(z) = Σ_g a_g sinc(b_g (z − c_g)) [+ z] [− φ(0)], b = softplus(β), c a fixed grid on [−L, L]."""

    def __init__(self, grid_size: int, grid_limit: float, reading: str, residual: bool, scale_position: str):
        super().__init__()
        self.reading, self.residual, self.scale_position = reading, residual, scale_position
        self.register_buffer("grid", torch.linspace(-grid_limit, grid_limit, grid_size), persistent=False)
        if reading == "fixed":  # Shannon spacing: sinc(b(c_h − c_g)) = δ_gh, so a = c interpolates z
            b0 = (grid_size - 1) / (2 * grid_limit)
            self.a = nn.Parameter(self.grid.clone())
        else:  # paper: φ ≡ 0
            b0 = 1.0
            self.a = nn.Parameter(torch.zeros(grid_size))
        self.beta = nn.Parameter(torch.full((grid_size,), math.log(math.expm1(b0))))

    def params(self) -> tuple[torch.Tensor, ...]:
        return self.a, self.beta

    def scales(self, s: float, A: torch.Tensor, B: torch.Tensor) -> tuple[float, float]:
        """(in, out) of ΔW = out · φ(in · Z)."""
        if self.reading == "fixed":
            rho = max(s * frobenius(A, B) / math.sqrt(A.shape[1] * B.shape[0]), 1e-12)
            return s / rho, rho
        return (s, 1.0) if self.scale_position == "inside" else (1.0, s)

    def _shift(self, a, b, c) -> torch.Tensor | float:
        """f(0) for the fixed reading (φ̃ = f − f(0)), else 0."""
        return a @ torch.sinc(-b * c) if self.reading == "fixed" else 0.0

    def value(self, u: torch.Tensor, a: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        b, c = F.softplus(beta), self.grid.to(u.dtype)
        out = u.clone() if self.residual else torch.zeros_like(u)
        flat, kernel = out.view(-1), _kernels()[0]
        for sl in _grid_chunks(len(c)):
            flat += kernel(u.reshape(-1), a[sl], b[sl], c[sl])
        return out.sub_(self._shift(a, b, c))

    def grad(self, u, g_out, a, beta):
        """(φ(u), g_out ⊙ φ′(u), ∂/∂a, ∂/∂β) for the upstream gradient g_out of φ(u), from one
        evaluation of each sin and cos."""
        b, c = F.softplus(beta), self.grid.to(u.dtype)
        uf, gf = u.reshape(-1), g_out.reshape(-1)
        value = uf.clone() if self.residual else torch.zeros_like(uf)
        dphi = torch.ones_like(uf) if self.residual else torch.zeros_like(uf)
        da, w_dot_g = torch.zeros_like(a), torch.zeros_like(a)
        terms = _kernels()[1]
        for sl in _grid_chunks(len(c)):
            for n in range(0, len(uf), GRAD_CHUNK_ELEMENTS):  # G×chunk buffers stay small
                chunk = slice(n, n + GRAD_CHUNK_ELEMENTS)
                s, w, slope = terms(uf[chunk], a[sl], b[sl], c[sl])
                value[chunk] += a[sl] @ s
                da[sl] += s @ gf[chunk]
                w_dot_g[sl] += w @ gf[chunk]
                dphi[chunk] += slope
        value -= self._shift(a, b, c)
        da, dbeta = self._param_grads(a, beta, b, c, da, w_dot_g, gf.sum() if self.reading == "fixed" else None)
        return value.view_as(u), g_out * dphi.view_as(u), da, dbeta

    def _param_grads(self, a, beta, b, c, da, w_dot_g, g_total):
        """(∂/∂a, ∂/∂β) from Σ G·s_g and Σ G·w_g: ∂/∂b_g sinc(b_g(u − c_g)) = sinc′(t)(u − c_g) = w / b_g."""
        db_dbeta = torch.sigmoid(beta)
        dbeta = a * db_dbeta / b * w_dot_g
        if self.reading == "fixed":  # − f(0) contributes − (∂f(0)) · Σ G
            t0 = -b * c
            s0 = torch.sinc(t0)
            da = da - s0 * g_total
            dbeta = dbeta - a * db_dbeta / b * (torch.cos(math.pi * t0) - s0) * g_total
        return da, dbeta

    def _native_grid(self, a, beta):
        b = F.softplus(beta)
        return a.contiguous(), b, self.grid.to(b.dtype), float(self._shift(a, b, self.grid))

    def native_forward(self, lib, z, base, out, scale_in, scale_out, a, beta) -> None:
        """out = base + scale_out · φ(scale_in · z) by the C kernel (flat float32 blocks)."""
        a, b, c, shift = self._native_grid(a, beta)
        lib.sinc_forward(_threads(z.numel()), z.numel(), _ptr(z), _ptr(base), _ptr(out), scale_in, scale_out,
                         len(c), _ptr(a), _ptr(b), _ptr(c), self.residual, shift)

    def native_backward(self, lib, z, g, base, merged, scale_in, scale_out, a, beta):
        """As native_forward into merged (if not None), g = ∂L/∂ΔW ← ∂L/∂z; returns (∂/∂a, ∂/∂β)."""
        a, b, c, shift = self._native_grid(a, beta)
        g_total = scale_out * g.sum() if self.reading == "fixed" else None  # before g turns into ∂L/∂z
        threads = _threads(z.numel())
        da, w_dot_g = torch.zeros(threads, len(c)), torch.zeros(threads, len(c))  # one row per thread
        lib.sinc_backward(threads, z.numel(), _ptr(z), _ptr(g), _ptr(base), _ptr(merged), _ptr(g), scale_in, scale_out,
                          len(c), _ptr(a), _ptr(b), _ptr(c), self.residual, shift, _ptr(da), _ptr(w_dot_g))
        return self._param_grads(a, beta, b, c, da.sum(0), w_dot_g.sum(0), g_total)


class SinePhi(nn.Module):
    """φ = sin with in = ω, out = s/√k: SineLoRA has no parameters of its own."""

    def __init__(self, omega: float, in_features: int):
        super().__init__()
        self.omega, self.in_features = omega, in_features

    def params(self) -> tuple[torch.Tensor, ...]:
        return ()

    def scales(self, s: float, A: torch.Tensor, B: torch.Tensor) -> tuple[float, float]:
        return self.omega, s / math.sqrt(self.in_features)

    def value(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sin(u)

    def grad(self, u, g_out):
        return torch.sin(u), g_out * torch.cos(u)

    def native_forward(self, lib, z, base, out, scale_in, scale_out) -> None:
        lib.sine_forward(_threads(z.numel()), z.numel(), _ptr(z), _ptr(base), _ptr(out), scale_in, scale_out)

    def native_backward(self, lib, z, g, base, merged, scale_in, scale_out):
        lib.sine_backward(_threads(z.numel()), z.numel(), _ptr(z), _ptr(g), _ptr(base), _ptr(merged), _ptr(g), scale_in, scale_out)
        return ()


def frobenius(A: torch.Tensor, B: torch.Tensor) -> float:
    """‖B·A‖_F through the r×r route: ‖BA‖_F² = tr((BᵀB)(AAᵀ)), never forming B·A."""
    with torch.no_grad():
        return float(((B.T @ B) * (A @ A.T)).sum().clamp_min(0).sqrt())


def _forward_block(phi, params, z, base, out, scale_in: float, scale_out: float) -> None:
    """out = base + scale_out · φ(scale_in · z) for one row block (base may be None, out may be z)."""
    lib = _native(z, phi)
    if base is not None:
        base = base.to(z.dtype).contiguous()
    if lib is not None:
        phi.native_forward(lib, z, base, out, scale_in, scale_out, *params)
        return
    torch.mul(phi.value(scale_in * z, *params), scale_out, out=out)
    if base is not None:
        out += base


def _backward_block(phi, params, z, g, base, merged, scale_in: float, scale_out: float) -> tuple:
    """One row block of the backward with g = ∂L/∂ΔW there: merged = base + ΔW (skipped if None;
    may be z), g ← ∂L/∂z in place; returns φ's parameter gradients."""
    lib = _native(z, phi)
    if base is not None:
        base = base.to(z.dtype).contiguous()
    if lib is not None:
        return phi.native_backward(lib, z, g, base, merged, scale_in, scale_out, *params)
    value, g_u, *dparams = phi.grad(scale_in * z, scale_out * g, *params)
    if merged is not None:
        torch.mul(value, scale_out, out=merged)
        if base is not None:
            merged += base
    torch.mul(g_u, scale_in, out=g)
    return tuple(dparams)


_SCRATCH = threading.local()


def _scratch(slot: int, d: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A d×k view of this thread's scratch buffer `slot`, kept between calls and grown to the
    largest layer: a fresh d×k allocation per call costs page faults (about 0.4 ns per byte on
    the 2-core bench VM, more than the sine passes themselves). Nothing outlives a call in it."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (slot, dtype, device)
    if key not in buffers or buffers[key].numel() < d * k:
        buffers[key] = None  # free the smaller one first
        buffers[key] = torch.empty(d * k, dtype=dtype, device=device)
    return buffers[key][: d * k].view(d, k)


def release_scratch() -> None:
    """Free this thread's scratch buffers (the next call allocates them again)."""
    _SCRATCH.__dict__.pop("buffers", None)


def delta_weight(A, B, phi, params, scale_in: float, scale_out: float, base=None, out=None) -> torch.Tensor:
    """Dense ΔW = out · φ(in · B·A) [+ base], built block by block in `out` (a new tensor if None;
    Z's block goes there first): merging, analysis, the Function's forward."""
    dtype = torch.promote_types(A.dtype, torch.float32)
    A, B = A.to(dtype), B.to(dtype)
    params = [p.to(dtype) for p in params]
    if out is None:
        out = torch.empty(B.shape[0], A.shape[1], dtype=dtype, device=A.device)
    for rows in _row_blocks(*out.shape):
        z = torch.mm(B[rows], A, out=out[rows])
        _forward_block(phi, params, z, None if base is None else base[rows], z, scale_in, scale_out)
    return out


class MergedElementwiseLinear(torch.autograd.Function):
    """y = x·(W0 + ΔW)ᵀ + bias (or x·ΔWᵀ when W0 is None), ΔW = out · φ(in · B·A).

    Forward: Z's row blocks turned into W0 + ΔW in place, one GEMM. Backward: G = G_yᵀ·x (the
    extra dense GEMM), then per row block of Z (built in a second buffer) one pass turns Z's
    block into W0 + ΔW's (for ∂x) and G's block into dZ = in · out · G ⊙ φ′(u), and gives φ's
    parameter gradients (sums of G against the same sin/cos values); dB = dZ·Aᵀ, dA += Bᵀ·dZ.
    Both d×k buffers are per-thread scratch (_scratch).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, phi, scale_in, scale_out, *params):
        ctx.phi, ctx.scales = phi, (scale_in, scale_out)
        ctx.save_for_backward(x, weight, A, B, *params)
        dtype = torch.promote_types(A.dtype, torch.float32)
        merged = _scratch(0, B.shape[0], A.shape[1], dtype, A.device)
        delta_weight(A, B, phi, params, scale_in, scale_out, base=weight, out=merged)
        return F.linear(x, merged.to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, A, B, *params = ctx.saved_tensors
        phi, (scale_in, scale_out) = ctx.phi, ctx.scales
        dtype = torch.promote_types(A.dtype, torch.float32)
        gy = grad_y.reshape(-1, grad_y.shape[-1])
        G = _scratch(0, B.shape[0], A.shape[1], dtype, A.device)  # becomes dZ block by block
        torch.mm(gy.T.to(dtype), x.reshape(-1, x.shape[-1]).to(dtype), out=G)
        grad_w = G.to(weight.dtype, copy=True) if ctx.needs_input_grad[1] else None
        work = _scratch(1, *G.shape, dtype, A.device)  # Z, then W0 + ΔW
        Af, Bf = A.to(dtype), B.to(dtype)
        pf = [p.to(dtype) for p in params]
        dA, dB = torch.zeros_like(Af), torch.empty_like(Bf)
        dparams = [torch.zeros_like(p) for p in pf]
        for rows in _row_blocks(*G.shape):
            z = torch.mm(Bf[rows], Af, out=work[rows])
            base = None if weight is None else weight[rows]
            parts = _backward_block(phi, pf, z, G[rows], base, z if ctx.needs_input_grad[0] else None, scale_in, scale_out)
            dZ = G[rows]
            dB[rows] = dZ @ Af.T
            dA += Bf[rows].T @ dZ
            for total, part in zip(dparams, parts):
                total += part
        grad_x = (gy @ work.to(gy.dtype)).view_as(x) if ctx.needs_input_grad[0] else None
        grad_bias = gy.sum(0) if ctx.needs_input_grad[2] else None
        dparams = [d.to(p.dtype) for d, p in zip(dparams, params)]
        return grad_x, grad_w, grad_bias, dA.to(A.dtype), dB.to(B.dtype), None, None, None, *dparams


def naive_delta(A, B, phi, params, scale_in: float, scale_out: float) -> torch.Tensor:
    """The broadcasting reference: ΔW with autograd through a G×d×k tensor. Tests and bench only."""
    u = scale_in * (B @ A)
    if isinstance(phi, SinePhi):
        return scale_out * torch.sin(u)
    a, beta = params
    b, c = F.softplus(beta), phi.grid.to(u.dtype)
    basis = torch.sinc(b[:, None, None] * (u[None] - c[:, None, None]))
    f = torch.einsum("g,gij->ij", a, basis)
    if phi.residual:
        f = f + u
    if phi.reading == "fixed":
        f = f - a @ torch.sinc(-b * c)
    return scale_out * f


class ElementwiseVariant(variants.PeftbenchVariant):
    """The peft variant for the whole family; `lora_phi[adapter]` holds φ (and its parameters)."""

    factors = None  # ΔW = out·φ(in·B·A) is no product of small factors: see delta_weight

    @staticmethod
    def init(module, adapter_name, config, **kwargs):
        opts = config.peftbench_options
        if config.peftbench_variant == "sine_lora":
            phi = SinePhi(opts["omega"], module.in_features)
        else:
            phi = SincPhi(opts["grid_size"], opts["grid_limit"], opts["reading"], opts["residual"], opts["scale_position"])
        variants.add_container(module, "lora_phi")[adapter_name] = phi.to(module.lora_A[adapter_name].weight.device)

    @staticmethod
    def _args(module, adapter):
        A, B = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        phi = module.lora_phi[adapter]
        return A, B, phi, phi.scales(module.scaling[adapter], A, B), phi.params()

    @staticmethod
    def delta_weight(module, adapter):
        A, B, phi, (s_in, s_out), params = ElementwiseVariant._args(module, adapter)
        with torch.no_grad():
            return delta_weight(A, B, phi, params, s_in, s_out)

    @staticmethod
    def forward_whole(module, adapter, x):
        """Dropout 0: base and update in one merged GEMM."""
        A, B, phi, (s_in, s_out), params = ElementwiseVariant._args(module, adapter)
        base = module.get_base_layer()
        return MergedElementwiseLinear.apply(x, base.weight, base.bias, A, B, phi, s_in, s_out, *params)

    @staticmethod
    def forward(module, active_adapter, x, result, **kwargs):
        """Dropout > 0: the update sees dropped-out inputs, so it cannot share the base GEMM."""
        A, B, phi, (s_in, s_out), params = ElementwiseVariant._args(module, active_adapter)
        x = module.lora_dropout[active_adapter](x)
        return result + MergedElementwiseLinear.apply(x, None, None, A, B, phi, s_in, s_out, *params)


for _name in ("lr_lora", "lr_lora_fixed", "sine_lora"):
    variants.VARIANTS[_name] = ElementwiseVariant


@register("lr_lora")
def build_lr_lora(
    model: nn.Module,
    r: int,
    lora_alpha: float | None,
    lora_dropout: float,
    target_modules: str | list[str],
    grid_size: int,
    grid_limit: float,
    scale_position: str,
    residual: bool,
    reading: str,
) -> nn.Module:
    """LR-LoRA, paper-exact by default: ΔW = φ(s·B·A), φ(z) = Σ_g a_g sinc(b_g(z − c_g)), a = 0 at init.

    lora_alpha defaults to r (s = 1, so `scale_position` inside and outside agree). `reading:
    fixed` is `lr_lora_fixed`. Dropout 0.05 is the paper's LLM setting; 0 enables the single
    merged GEMM.
    Trainable parameters: Σ over adapted linears (d_out × d_in) of r·(d_in + d_out) + 2·grid_size.
    """
    options = dict(grid_size=grid_size, grid_limit=grid_limit, scale_position=scale_position, residual=residual, reading=reading)
    name = "lr_lora_fixed" if reading == "fixed" else "lr_lora"
    return variants.build(model, name, options, r, lora_alpha or r, lora_dropout, target_modules)


@register("lr_lora_fixed")
def build_lr_lora_fixed(
    model: nn.Module,
    r: int,
    lora_alpha: float | None,
    lora_dropout: float,
    target_modules: str | list[str],
    grid_size: int,
    grid_limit: float,
) -> nn.Module:
    """LR-LoRA, corrected reading: ΔW = ρ·(f(s·Z/ρ) − f(0)), ρ = RMS(s·Z) (detached, floored).

    f starts as the sinc interpolant of the identity at Shannon spacing, so ΔW starts as LoRA's
    update (zero, since B = 0) and B, A get LoRA's gradients from step 0.
    Trainable parameters: Σ over adapted linears (d_out × d_in) of r·(d_in + d_out) + 2·grid_size.
    """
    return build_lr_lora(model, r, lora_alpha, lora_dropout, target_modules, grid_size, grid_limit, "inside", False, "fixed")


@register("sine_lora")
def build_sine_lora(
    model: nn.Module,
    omega: float,
    r: int,
    lora_alpha: float,
    lora_dropout: float,
    target_modules: str | list[str],
) -> nn.Module:
    """SineLoRA (Ji et al. 2025): ΔW = s·sin(ω·B·A)/√d_in, B = 0 at init. Sweep ω (no safe default).

    Trainable parameters: Σ over adapted linears (d_out × d_in) of r·(d_in + d_out).
    """
    return variants.build(model, "sine_lora", {"omega": omega}, r, lora_alpha, lora_dropout, target_modules)

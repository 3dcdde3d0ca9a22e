"""The updates we write ourselves, checked in float64 against dense references (gradcheck), and
the diagnostics of adapters.analysis against torch.linalg."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import adapters
from adapters import analysis, dylora, elalora, elementwise, variants
from adapters.elementwise import MergedElementwiseLinear, SincPhi, SinePhi, naive_delta
from adapters.shift import ShiftModulation
from jobs import backbones

pytestmark = pytest.mark.usefixtures("eager_kernels", "one_thread")


@pytest.fixture
def small_blocks(monkeypatch):
    """Row blocks of 2 rows, element chunks of 4 and grid chunks of 4: every loop runs several times."""
    monkeypatch.setattr(elementwise, "BLOCK_ELEMENTS", 10)
    monkeypatch.setattr(elementwise, "GRAD_CHUNK_ELEMENTS", 4)
    monkeypatch.setattr(elementwise, "GRID_CHUNK", 4)


def phis():
    """(id, φ, (in, out)) for every reading of the family, with non-trivial parameters."""
    gen = torch.Generator().manual_seed(0)
    cases = []
    for reading, residual, position in [("paper", False, "inside"), ("paper", True, "inside"), ("paper", False, "outside"), ("fixed", False, "inside")]:
        phi = SincPhi(6, 3.0, reading, residual, position).double()
        with torch.no_grad():
            phi.a.add_(torch.randn(6, generator=gen, dtype=torch.float64))
            phi.beta.add_(0.3 * torch.randn(6, generator=gen, dtype=torch.float64))
        cases.append((f"{reading}-residual={residual}-{position}", phi, (1.7, 0.6)))
    cases.append(("sine", SinePhi(omega=3.0, in_features=5), (3.0, 0.4)))
    return cases


@pytest.mark.parametrize("name, phi, scales", phis(), ids=[c[0] for c in phis()])
@pytest.mark.parametrize("merged", [True, False], ids=["merged", "delta_only"])
def test_merged_elementwise_linear_matches_the_dense_reference_and_passes_gradcheck(small_blocks, name, phi, scales, merged):
    gen = torch.Generator().manual_seed(1)
    d, k, r, T = 7, 5, 3, 4
    x = torch.randn(2, T, k, generator=gen, dtype=torch.float64, requires_grad=True)
    A = torch.randn(r, k, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.randn(d, r, generator=gen, dtype=torch.float64, requires_grad=True)
    W0 = torch.randn(d, k, generator=gen, dtype=torch.float64) if merged else None
    bias = torch.randn(d, generator=gen, dtype=torch.float64) if merged else None
    params = phi.params()
    inputs = (x, W0, bias, A, B, phi, *scales, *params)

    # dense reference: autograd through the broadcast G×d×k formula
    ref = torch.nn.functional.linear(x, (W0 if merged else 0) + naive_delta(A, B, phi, params, *scales), bias)
    out = MergedElementwiseLinear.apply(*inputs)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    leaves = (x, A, B, *params)
    g_ref = torch.autograd.grad(ref.square().sum(), leaves)
    g_out = torch.autograd.grad(out.square().sum(), leaves)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
    assert torch.autograd.gradcheck(MergedElementwiseLinear.apply, inputs)


@pytest.mark.parametrize("name, phi, scales", phis(), ids=[c[0] for c in phis()])
@pytest.mark.parametrize("merged", [True, False], ids=["merged", "delta_only"])
def test_native_kernels_match_the_eager_torch_path(monkeypatch, name, phi, scales, merged):
    """CPU float32 runs the C kernels, here over several row blocks with ragged ends, split over 2 threads."""
    assert elementwise._native_library() is not None, "the C kernels should build here"
    monkeypatch.setattr(elementwise, "BLOCK_ELEMENTS", 300)
    monkeypatch.setattr(elementwise, "PART_MIN_ELEMENTS", 64)
    phi = copy.deepcopy(phi).float()
    gen = torch.Generator().manual_seed(2)
    d, k, r, T = 37, 29, 3, 6
    x = torch.randn(T, k, generator=gen, requires_grad=True)
    A = torch.randn(r, k, generator=gen, requires_grad=True)
    B = torch.randn(d, r, generator=gen, requires_grad=True)
    W0 = torch.randn(d, k, generator=gen) if merged else None
    bias = torch.randn(d, generator=gen) if merged else None
    leaves = (x, A, B, *phi.params())

    def run(native: bool):
        monkeypatch.setattr(elementwise, "COMPILE", native)
        out = MergedElementwiseLinear.apply(x, W0, bias, A, B, phi, *scales, *phi.params())
        return (out, *torch.autograd.grad(out.square().sum(), leaves))

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        native = run(True)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(native, run(False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.detach().abs().max()))


def test_without_a_c_compiler_the_torch_path_runs_with_a_warning(monkeypatch):
    """A machine where elementwise_kernels.c cannot be built still trains: one warning, then the
    compiled torch kernels, with the eager path's results."""
    name, phi, scales = phis()[0]
    phi = copy.deepcopy(phi).float()
    gen = torch.Generator().manual_seed(4)
    x, A, B = torch.randn(5, 7, generator=gen), torch.randn(2, 7, generator=gen), torch.randn(6, 2, generator=gen)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    elementwise._native_library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="native kernels unavailable"):
            assert elementwise._native_library() is None
        fallback = MergedElementwiseLinear.apply(x, None, None, A, B, phi, *scales, *phi.params())
    finally:
        elementwise._native_library.cache_clear()  # later tests build the real kernels again
    monkeypatch.setattr(elementwise, "COMPILE", False)
    eager = MergedElementwiseLinear.apply(x, None, None, A, B, phi, *scales, *phi.params())
    torch.testing.assert_close(fallback, eager, rtol=1e-5, atol=1e-5 * float(eager.detach().abs().max()))


def test_layers_of_different_sizes_share_the_scratch_buffers_correctly():
    """The d×k scratch grows to the largest layer and is reused by smaller ones (views into it)."""
    gen = torch.Generator().manual_seed(3)
    phi = SinePhi(omega=3.0, in_features=5)
    elementwise.release_scratch()
    for d, k in [(4, 5), (9, 6), (3, 2), (9, 6)]:
        x = torch.randn(3, k, generator=gen, dtype=torch.float64, requires_grad=True)
        A = torch.randn(2, k, generator=gen, dtype=torch.float64, requires_grad=True)
        B = torch.randn(d, 2, generator=gen, dtype=torch.float64, requires_grad=True)
        W0 = torch.randn(d, k, generator=gen, dtype=torch.float64)
        out = MergedElementwiseLinear.apply(x, W0, None, A, B, phi, 3.0, 0.4)
        ref = torch.nn.functional.linear(x, W0 + naive_delta(A, B, phi, (), 3.0, 0.4))
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad(out.sum(), (x, A, B)), torch.autograd.grad(ref.sum(), (x, A, B))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_compiled_kernels_match_the_eager_ones(monkeypatch):
    gen = torch.Generator().manual_seed(6)
    phi = SincPhi(50, 3.0, "paper", False, "inside")
    with torch.no_grad():
        phi.a.normal_(generator=gen)
    u, g = torch.randn(3000, generator=gen) * 2, torch.randn(3000, generator=gen)
    eager = (phi.value(u, *phi.params()), *phi.grad(u, g, *phi.params()))
    monkeypatch.setattr(elementwise, "COMPILE", True)
    compiled = (phi.value(u, *phi.params()), *phi.grad(u, g, *phi.params()))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_sinc_prime_matches_a_50_digit_reference_across_the_taylor_threshold():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    points = [0.0, 1e-6, -1e-3, 0.05, -0.0999, 0.1, 0.1001, 0.7, -2.3, 5.0]
    exact = torch.tensor([float(mpmath.diff(lambda u: mpmath.sinc(mpmath.pi * u), mpmath.mpf(p))) for p in points], dtype=torch.float64)
    t = torch.tensor(points, dtype=torch.float64)
    w = torch.cos(math.pi * t) - torch.sinc(t)
    torch.testing.assert_close(elementwise.sinc_prime(t, w), exact, rtol=1e-9, atol=1e-14)


def test_frobenius_uses_the_small_route_exactly():
    gen = torch.Generator().manual_seed(2)
    A, B = torch.randn(4, 30, generator=gen, dtype=torch.float64), torch.randn(20, 4, generator=gen, dtype=torch.float64)
    assert elementwise.frobenius(A, B) == pytest.approx(float(torch.linalg.matrix_norm(B @ A)), rel=1e-12)


def test_fixed_reading_starts_as_the_identity_and_paper_reading_as_zero():
    """Risk 1 and its fix: paper φ ≡ 0 (φ′ ≡ 0), fixed f ≈ identity on the grid with f(0) = 0."""
    z = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64)
    paper, fixed = SincPhi(50, 3.0, "paper", False, "inside").double(), SincPhi(50, 3.0, "fixed", False, "inside").double()
    assert torch.equal(paper.value(z, *paper.params()), torch.zeros_like(z))
    assert fixed.value(torch.zeros(1, dtype=torch.float64), *fixed.params()).abs().item() < 1e-12
    # exact on the grid up to b's float32 storage
    torch.testing.assert_close(fixed.value(fixed.grid, *fixed.params()), fixed.grid, rtol=0, atol=1e-5)
    assert (fixed.value(z, *fixed.params()) - z).abs().max() < 0.05  # close between grid points


def lora_grads(tiny, method, **hp):
    """∂L/∂B of the first adapted module after one backward on a batch."""
    torch.manual_seed(0)
    model = adapters.apply(copy.deepcopy(tiny), method, **hp)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    return layer.lora_B["default"].weight.grad, layer.lora_A["default"].weight.grad


def test_paper_reading_gives_b_and_a_no_gradient_at_step_zero_and_the_fixed_reading_gives_loras():
    tiny, _ = backbones.load("tiny-llama")
    gB_paper, gA_paper = lora_grads(tiny, "lr_lora", r=4, lora_dropout=0.0)
    gB_fixed, _ = lora_grads(tiny, "lr_lora_fixed", r=4, lora_dropout=0.0)
    gB_lora, _ = lora_grads(tiny, "lora", r=4, lora_alpha=4)
    assert torch.count_nonzero(gB_paper) == 0 and torch.count_nonzero(gA_paper) == 0
    assert gB_lora.abs().max() > 0
    torch.testing.assert_close(gB_fixed, gB_lora, rtol=0.05, atol=1e-3 * float(gB_lora.abs().max()))


SHIFT_CASES = [("linear", "flat"), ("cyclic", "flat"), ("cyclic", "row"), ("learned", "flat")]


def dense_shift(mod: ShiftModulation) -> torch.Tensor:
    """S written straight from the definitions in METHODS.md (no separable terms)."""
    d, k = mod.d, mod.k
    u = (2 * torch.arange(d, dtype=torch.float64) / (d - 1) - 1)[:, None]
    v = (2 * torch.arange(k, dtype=torch.float64) / (k - 1) - 1)[None, :]
    if mod.shift == "linear":
        return 1 + mod.theta[0] * u + mod.theta[1] * v
    if mod.shift == "cyclic":
        i, j = torch.arange(d, dtype=torch.float64)[:, None], torch.arange(k, dtype=torch.float64)[None, :]
        pos = i * k + j if mod.pos == "flat" else i + 0 * j
        return 1 + mod.alpha * torch.sin(2 * math.pi * mod.theta * pos / d)
    rho = mod.gamma_u @ mod.w[0] + mod.b[0]
    kappa = mod.gamma_v @ mod.w[1] + mod.b[1]
    return 1 + torch.tanh(rho)[:, None] + torch.tanh(kappa)[None, :]


@pytest.mark.parametrize("shift, pos", SHIFT_CASES)
def test_separable_shift_matches_the_dense_reference_and_passes_gradcheck(shift, pos):
    gen = torch.Generator().manual_seed(3)
    d, k, r = 6, 5, 2
    mod = ShiftModulation(shift, d, k, shift_dim=4, pos=pos).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    assert len(list(mod.parameters())) > 0
    x = torch.randn(3, k, generator=gen, dtype=torch.float64, requires_grad=True)
    A = torch.randn(r, k, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.randn(d, r, generator=gen, dtype=torch.float64, requires_grad=True)
    params = list(mod.parameters())

    def separable(x, A, B, *_):
        return sum(p * ((q * x) @ A.T @ B.T) for p, q in mod.terms())

    def dense(x, A, B, *_):
        return x @ (dense_shift(mod) * (B @ A)).T

    # the module's coordinates are float32 linspaces: agreement to their precision
    torch.testing.assert_close(separable(x, A, B), dense(x, A, B), rtol=1e-6, atol=1e-6)
    leaves = (x, A, B, *params)
    for a, b in zip(torch.autograd.grad(separable(x, A, B).sum(), leaves), torch.autograd.grad(dense(x, A, B).sum(), leaves)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(separable, leaves)


def test_shift_starts_as_ones():
    for shift, pos in SHIFT_CASES:
        torch.testing.assert_close(ShiftModulation(shift, 6, 5, 4, pos).dense(), torch.ones(6, 5))


def test_dylora_trains_at_the_drawn_rank_and_evaluates_at_full_rank():
    tiny, _ = backbones.load("tiny-llama")
    model = adapters.apply(copy.deepcopy(tiny), "dylora", r=8, lora_alpha=16)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    _, layer, adapter = next(variants.layers(model, "dylora"))
    x = torch.randn(3, layer.in_features, dtype=torch.float64)
    layer.double()
    A, B, W0 = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight, layer.get_base_layer().weight
    dylora.set_rank(model, 3)
    layer.train()
    torch.testing.assert_close(layer(x), x @ (W0 + 16 / 3 * B[:, :3] @ A[:3]).T)
    layer.eval()
    torch.testing.assert_close(layer(x), x @ (W0 + 16 / 8 * B @ A).T)
    draws = set()
    for step in range(30):
        dylora.draw_rank(model, step, 30)
        draws.add(layer.dylora_rank)
    assert draws <= set(range(1, 9)) and len(draws) > 3


def test_elalora_prunes_and_expands_at_a_constant_budget_without_moving_delta_w():
    tiny, _ = backbones.load("tiny-llama")
    model = adapters.apply(copy.deepcopy(tiny), "elalora", init_r=4, max_r=6, k=2, interval=1, t_init=0.0, t_final=0.0)
    found = list(variants.layers(model, "elalora"))
    gates = [layer.lora_ela[a] for _, layer, a in found]
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for g in gates:
            g.lam.copy_(torch.randn(6, generator=gen) * g.mask)
            g.importance.copy_(torch.rand(6, generator=gen) * g.mask)
    budget = sum(int(g.mask.sum()) for g in gates)
    weakest = min((float(g.importance[i]), n, i) for n, g in enumerate(gates) for i in range(6) if g.mask[i])
    before = [elalora.ElaVariant.delta_weight(layer, a) for _, layer, a in found]
    with torch.no_grad():
        elalora._prune_and_expand(found, gates, k=2)
    assert sum(int(g.mask.sum()) for g in gates) == budget
    _, n, i = weakest
    assert gates[n].mask[i] == 0 and gates[n].lam[i] == 0
    # pruning removes exactly the pruned ranks' terms; expansion adds λ = 0 ranks, so ΔW moves only by the pruned terms
    moved = [not torch.allclose(elalora.ElaVariant.delta_weight(layer, a), b) for (_, layer, a), b in zip(found, before)]
    assert 1 <= sum(moved) <= 2


def test_factored_spectrum_and_stable_rank_match_torch_linalg():
    gen = torch.Generator().manual_seed(5)
    B, A = torch.randn(40, 6, generator=gen, dtype=torch.float64), torch.randn(6, 30, generator=gen, dtype=torch.float64)
    M = B @ A
    exact = torch.linalg.svdvals(M)[:6]
    torch.testing.assert_close(analysis.factored_spectrum(B, A), exact, rtol=1e-10, atol=1e-10)
    for dense in (M, torch.randn(25, 35, generator=gen, dtype=torch.float64), torch.ones(8, 9, dtype=torch.float64)):
        top = float(torch.linalg.matrix_norm(dense, ord=2))
        assert analysis.spectral_norm(dense) == pytest.approx(top, rel=1e-6)
        assert analysis.stable_rank(dense) == pytest.approx(float(dense.norm() ** 2) / top**2, rel=1e-5)
    assert analysis.stable_rank(torch.ones(5, 5)) == pytest.approx(1.0)


def test_analysis_reports_every_adapted_module_with_its_method_extras():
    tiny, _ = backbones.load("tiny-llama")
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in tiny.modules()) - 1  # not the head
    for method, extra in [("lr_lora", "phi_curve"), ("lr_lora_fixed", "phi_curve"), ("lora_shift", "shift_map"), ("lora", None)]:
        model = adapters.apply(copy.deepcopy(tiny), method)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        reports = analysis.analyze(model)
        assert len(reports) == n_linear
        first = reports[0]
        delta = next(m for n, m in model.named_modules() if n == first.name).get_delta_weight("default")
        top = float(torch.linalg.matrix_norm(delta.double(), ord=2))
        assert first.stable_rank == pytest.approx(float(delta.double().norm() ** 2) / top**2, rel=1e-4)
        torch.testing.assert_close(first.spectrum[0].double(), torch.tensor(top, dtype=torch.float64), rtol=1e-4, atol=0)
        if extra:
            assert getattr(first, extra) is not None
        if method == "lr_lora":  # the constant φ(0)·11ᵀ dominates: removing it raises srank (risk 2)
            assert first.stable_rank_centered > first.stable_rank
        curves = analysis.analyze(model, curves_only=True)[0]  # the in-training snapshot: no SVDs
        assert curves.spectrum.numel() == 0 and curves.stable_rank != curves.stable_rank  # NaN
        for name in ("phi_curve", "shift_map"):
            kept, full = getattr(curves, name), getattr(first, name)
            assert (kept is None) == (full is None)
            if full is not None:
                torch.testing.assert_close(kept, full)


@pytest.mark.parametrize("method, hp", [
    ("nola", {"num_basis_a": 5, "num_basis_b": 4, "r": 2}),
    ("elalora", {"init_r": 2, "max_r": 3}),
    ("dylora", {"r": 3}),
    ("lora_shift", {"shift": "cyclic", "r": 2}),
    ("lora_shift", {"shift": "learned", "r": 2, "shift_dim": 4}),
])
def test_lora_variant_layers_match_their_dense_delta_and_pass_gradcheck(method, hp):
    """layer(x) = x·(W0 + ΔW)ᵀ with ΔW from `delta_weight`, and gradcheck through the layer's own
    forward with respect to every trainable tensor, in float64."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False))
    model = adapters.apply(base, method, target_modules=["0"], **hp).double()
    _, layer, adapter = next(variants.layers(model, method))
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for n, p in layer.named_parameters():
            if p.requires_grad:
                p.normal_(std=0.5)
    if method == "elalora":
        layer.lora_ela[adapter].mask.copy_(torch.tensor([1.0, 0.0, 1.0]))
    layer.eval()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    dense = x @ (layer.get_base_layer().weight + variants.VARIANTS[method].delta_weight(layer, adapter)).T
    torch.testing.assert_close(layer(x), dense, rtol=1e-12, atol=1e-12)

    def forward(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    values = tuple(p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters() if p.requires_grad)
    assert torch.autograd.gradcheck(forward, (x, *values))

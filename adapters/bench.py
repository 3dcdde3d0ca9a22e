"""`python -m adapters.bench [--quick]`: step time and peak memory of each method relative to LoRA.

--quick takes minutes on 2 CPU cores (README, Measured), the full run longer. Run it on an
otherwise idle machine: the ratios are only as good as that.

Two settings, measured side by side in one run:
1. one adapted linear (d = k = 1024 and 2048, T = 2048 tokens, r = 16, G = 50): forward and
   backward with an upstream gradient, x requiring grad as inside a network;
2. one SmolLM2-135M training step (all linear layers adapted, r = 16, AdamW step included).

Every measurement runs in a fresh child process (MALLOC_MMAP_THRESHOLD_ so freed buffers leave
the process): peak memory = the child's peak RSS (VmHWM, reset after set-up and a compile
warm-up on a tiny input) above its RSS at that reset, so it counts what the steps allocate
(the elementwise methods' scratch buffers are freed before the reset, so they count too).
Step time is the fastest of the repeats (the machine is shared; the minimum is the least noisy),
and the one-linear children run in interleaved rounds (every method once per round), so a burst
of load from elsewhere hits all methods of a round rather than one.

The naive broadcasting implementation of LR-LoRA (autograd through a G×d×k tensor) is measured
at d = 1024 with G = 50. At 2048 it would take several GB on a shared 2-core machine, so it is
measured at G = 5 and 10 and extrapolated linearly in G (its memory is affine in G); the same
extrapolation is checked against the direct G = 50 measurement at 1024.

FLOP-floor model: a step's floor time is its big-GEMM FLOPs at the machine's measured GEMM rate
plus its transcendental evaluations at the measured sin rate (a compiled, fused Σ_g sin(b_g·u):
library sin evaluations with no memory traffic). Per adapted linear with T tokens, d×k, rank r,
grid G:
  lora:               4Tdk + 6Tr(d+k) GEMM FLOPs
  lr_lora(_fixed):    6Tdk + 8dkr GEMM FLOPs (forward, ∂x, G = δᵀx; Z built twice, dB, dA)
                      + 3G·dk transcendentals (sin for φ forward; in backward one sin and one cos
                      give φ again, φ′ and the sums for ∂a, ∂β; this was 4G·dk while the
                      backward evaluated φ and φ′ in separate passes)
  sine_lora:          6Tdk + 8dkr + 3dk (sin; sin and cos)
  lora_shift (m terms of S): 4Tdk + 6m·Tr(d+k)
The floor ratio is floor(method)/floor(lora); the target is measured ratio ≤ 1.1 × floor ratio.
Transcendentals are priced at the library sin's rate; the native CPU kernels
(adapters/elementwise_kernels.c) evaluate sin πt and cos πt from one shared range reduction and
short polynomials, cheaper than that, so measured/floor can fall under 1 where sinc work dominates.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn as nn

from jobs import memory

D_SIZES, TOKENS, RANK, GRID = (1024, 2048), 2048, 16, 50
LINEAR_METHODS = {
    "lora": {"r": RANK, "lora_alpha": RANK},
    "lr_lora": {"r": RANK, "lora_dropout": 0.0},
    "lr_lora_fixed": {"r": RANK, "lora_dropout": 0.0},
    "sine_lora": {"r": RANK, "lora_alpha": RANK},
    "lora_shift": {"r": RANK, "lora_alpha": RANK, "shift": "learned"},
}
SHIFT_TERMS = {"linear": 2, "cyclic": 3, "learned": 2}


def _reset_peak() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) and return the current RSS in bytes."""
    memory.reset_peak()
    return memory.status_kb("VmRSS") * 1024


def _peak_since_reset() -> int:
    return memory.status_kb("VmHWM") * 1024


class Holder(nn.Module):
    def __init__(self, d: int, k: int):
        super().__init__()
        self.proj = nn.Linear(k, d, bias=False)

    def forward(self, x):
        return self.proj(x)


def _naive_step(d: int, grid: int):
    """LR-LoRA as plain broadcasting autograd (the reference of the tests)."""
    from adapters.elementwise import SincPhi, naive_delta

    W0 = torch.randn(d, d) / d**0.5
    A = nn.Parameter(torch.randn(RANK, d) / d**0.5)
    B = nn.Parameter(torch.randn(d, RANK) * 0.01)
    phi = SincPhi(grid, 3.0, "paper", False, "inside")
    with torch.no_grad():
        phi.a.normal_()

    def step(x, gy):
        y = nn.functional.linear(x, W0 + naive_delta(A, B, phi, phi.params(), 1.0, 1.0))
        y.backward(gy)

    return step


def _linear_step(method: str, d: int):
    import adapters

    torch.manual_seed(0)
    model = adapters.apply(Holder(d, d), method, target_modules=["proj"], **LINEAR_METHODS[method])
    with torch.no_grad():  # off the init, so every branch of the update does work
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))

    def step(x, gy):
        model(x).backward(gy)
        model.zero_grad(set_to_none=True)

    return step


def child_linear(spec: dict) -> dict:
    from adapters.elementwise import release_scratch

    d = spec["d"]
    step = _naive_step(d, spec["grid"]) if spec["method"] == "naive" else _linear_step(spec["method"], d)
    tiny_x = torch.randn(4, d, requires_grad=True)
    step(tiny_x, torch.randn(4, d))  # compile warm-up on a tiny input
    x, gy = torch.randn(TOKENS, d, requires_grad=True), torch.randn(TOKENS, d)
    release_scratch()  # the measured steps allocate it again, so peak memory counts it
    gc.collect()
    base = _reset_peak()
    times = []
    for _ in range(spec["repeats"]):
        x.grad = None
        start = time.perf_counter()
        step(x, gy)
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_mb": (_peak_since_reset() - base) / 2**20}


def child_smollm2(spec: dict) -> dict:
    import adapters
    from adapters.elementwise import release_scratch
    from jobs import backbones

    torch.manual_seed(0)
    model, _ = backbones.load("smollm2-135m")
    hp = {"r": RANK, **({"lora_dropout": 0.0} if spec["method"].startswith("lr_lora") else {})}
    if spec["method"] in ("lora", "sine_lora", "lora_shift", "dora"):
        hp["lora_alpha"] = RANK
    model = adapters.apply(model, spec["method"], **hp).train()
    optimizer = adapters.make_optimizer(model, spec["method"], lr=1e-4, weight_decay=0.0)

    def step(ids):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(torch.randint(0, 1000, (1, 8)))  # compile warm-up
    ids = torch.randint(0, 1000, (spec["batch"], spec["seq"]), generator=torch.Generator().manual_seed(0))
    release_scratch()
    gc.collect()
    base = _reset_peak()
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        step(ids)
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_mb": (_peak_since_reset() - base) / 2**20}


def interleaved(methods, rounds: int, measure) -> dict[str, dict]:
    """{method: fastest step and largest peak over `rounds` rounds, each round measuring every method once}."""
    runs = [{m: measure(m) for m in methods} for _ in range(rounds)]
    return {m: {"seconds": min(r[m]["seconds"] for r in runs), "peak_mb": max(r[m]["peak_mb"] for r in runs)} for m in methods}


def run_child(kind: str, threads: int, **spec) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-m", "adapters.bench", "--child", json.dumps({"kind": kind, "threads": threads, **spec})],
        capture_output=True, text=True, env=env, check=False,
    )
    if out.returncode:
        raise RuntimeError(f"bench child {kind} {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_rates(threads: int) -> tuple[float, float]:
    """(GEMM FLOP/s at T×d×d, d = 1024; sin evaluations/s), best of 3.

    The sin rate is that of a compiled, fused Σ_g sin(b_g·u) over 50 grid points and 2^18
    elements: sin evaluations with no memory traffic, the cheapest they come on this machine.
    """
    torch.set_num_threads(threads)
    a, b = torch.randn(TOKENS, 1024), torch.randn(1024, 1024)
    u, freqs = torch.randn(1 << 18), torch.linspace(0.5, 2.0, GRID)
    sin_sum = torch.compile(lambda u, f: torch.sin(f[:, None] * u).sum(0))
    a @ b
    sin_sum(u, freqs)
    gemm = min(_timed(lambda: a @ b) for _ in range(3))
    sin = min(_timed(lambda: sin_sum(u, freqs)) for _ in range(3))
    return 2 * TOKENS * 1024 * 1024 / gemm, u.numel() * GRID / sin


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floor_seconds(method: str, d: int, k: int, T: int, rates: tuple[float, float], shift: str = "learned") -> float:
    gemm_rate, sin_rate = rates
    if method == "lora":
        return (4 * T * d * k + 6 * T * RANK * (d + k)) / gemm_rate
    if method == "lora_shift":
        return (4 * T * d * k + 6 * SHIFT_TERMS[shift] * T * RANK * (d + k)) / gemm_rate
    transcendental = 3 * d * k if method == "sine_lora" else 3 * GRID * d * k
    return (6 * T * d * k + 8 * d * k * RANK) / gemm_rate + transcendental / sin_rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m adapters.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a shorter SmolLM2 batch, fewer methods there")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        torch.set_num_threads(spec["threads"])
        print(json.dumps((child_linear if spec["kind"] == "linear" else child_smollm2)(spec)))
        return

    repeats = 2 if args.quick else 3
    rates = machine_rates(args.threads)
    print(f"machine: {args.threads} threads, GEMM {rates[0] / 1e9:.1f} GFLOP/s, sin {rates[1] / 1e9:.2f} G evaluations/s")
    print(__doc__[__doc__.index("FLOP-floor model"):].strip(), "\n")

    print(f"One adapted linear, T = {TOKENS}, r = {RANK}, G = {GRID} (ratios to lora at the same d)")
    print(f"{'d=k':>5} {'method':<14} {'step s':>8} {'time×':>7} {'floor×':>7} {'/floor':>7} {'peak MB':>9} {'extra MB':>9} {'bound MB':>9}  targets")
    naive_at = {}
    for d in D_SIZES:
        rows = interleaved(LINEAR_METHODS, repeats, lambda m: run_child("linear", args.threads, method=m, d=d, repeats=2))
        lora = rows["lora"]
        bound = 3 * d * d * 4 / 2**20
        for m, row in rows.items():
            ratio = row["seconds"] / lora["seconds"]
            floor = floor_seconds(m, d, d, TOKENS, rates) / floor_seconds("lora", d, d, TOKENS, rates)
            extra = row["peak_mb"] - lora["peak_mb"]
            ok_time = ratio <= 1.1 * floor
            ok_mem = extra <= bound
            print(f"{d:>5} {m:<14} {row['seconds']:>8.3f} {ratio:>7.2f} {floor:>7.2f} {ratio / floor:>7.2f} {row['peak_mb']:>9.1f} "
                  f"{extra:>9.1f} {bound:>9.1f}  time {'ok' if ok_time else 'MISS'}, memory {'ok' if ok_mem else 'MISS'}")
        g5 = run_child("linear", args.threads, method="naive", d=d, grid=5, repeats=1)["peak_mb"]
        g10 = run_child("linear", args.threads, method="naive", d=d, grid=10, repeats=1)["peak_mb"]
        naive_at[d] = (g10 + (GRID - 10) * (g10 - g5) / 5, rows["lr_lora"]["peak_mb"])
    direct = run_child("linear", args.threads, method="naive", d=1024, grid=GRID, repeats=1)
    print(f"\nNaive broadcasting LR-LoRA (G×d×k autograd), peak MB: d=1024 measured at G=50: {direct['peak_mb']:.0f} "
          f"(step {direct['seconds']:.2f} s); extrapolated from G=5,10: {naive_at[1024][0]:.0f}")
    for d, (naive, ours) in naive_at.items():
        print(f"  d={d}: naive {naive:.0f} MB{' (extrapolated)' if d != 1024 else ' (extrapolated; direct above)'} vs "
              f"memory-bounded lr_lora {ours:.1f} MB: {naive / ours:.0f}× {'(target ≥ 10× at 2048: ' + ('ok)' if naive / ours >= 10 else 'MISS)') if d == 2048 else ''}")

    methods = ["lora", "lr_lora", "sine_lora"] if args.quick else ["lora", "lr_lora", "lr_lora_fixed", "sine_lora", "lora_shift", "dora"]
    batch, seq = (1, 64) if args.quick else (2, 128)
    print(f"\nOne SmolLM2-135M training step, batch {batch}×{seq} tokens, all linear layers, r = {RANK}, AdamW step included")
    print("  floor× = (lora's measured step + Σ over adapted linears of the method's floor − lora's floor) / lora's step")
    rows = {m: run_child("smollm2", args.threads, method=m, batch=batch, seq=seq, repeats=repeats - 1) for m in methods}
    lora = rows["lora"]["seconds"]
    for m, row in rows.items():
        ratio = row["seconds"] / lora
        floor = None if m == "dora" else (lora + smollm2_extra_floor(m, batch * seq, rates)) / lora
        verdict = "" if floor is None else f"floor× {floor:>6.2f}  time {'ok' if ratio <= 1.1 * floor else 'MISS'}"
        print(f"  {m:<14} {row['seconds']:>8.2f} s  {ratio:>6.2f}×  {verdict:<24} peak {row['peak_mb']:>8.1f} MB "
              f"({row['peak_mb'] - rows['lora']['peak_mb']:+.1f} vs lora)")


def smollm2_extra_floor(method: str, tokens: int, rates) -> float:
    """Σ over SmolLM2's adapted linears of floor(method) − floor(lora).

    SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 3 KV heads × 64; q,k,v,o,gate,up,down adapted.
    """
    h, i, kv, layers = 576, 1536, 192, 30
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    return layers * sum(floor_seconds(method, d, k, tokens, rates) - floor_seconds("lora", d, k, tokens, rates) for d, k in shapes)


if __name__ == "__main__":
    main()

"""`python -m jobs.gpu_check` (`make gpu-check`): the GPU path in one short run, no download.

For each method a randomly initialised Llama of a 1B shape (Llama-3.2-1B's) is built in bf16 on
the device and trained a few steps through the real loop (`jobs.train.train`: DeepSpeed, ZeRO-2)
on seeded random tokens; tokens/s (after the warm-up steps) and peak memory are reported
relative to LoRA. Then the elementwise kernels on the device against the float64 CPU
reference (`naive_delta`, forward and every gradient), the diagnostics on the device, and a
`none` forward on the device. One table is printed, the same as JSON goes to `--out`; the exit
code is 1 if anything failed.

It needs torch, transformers, peft and the packages in REQUIREMENTS (DeepSpeed and what it
imports; no Ray, MLflow, lm-eval or datasets). `--requirements` prints them without importing
any. `--device cpu --tiny` runs the same code on a 2-layer model in seconds (the test suite does).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# Beyond torch, transformers and peft: DeepSpeed and the packages it and the jobs level import.
REQUIREMENTS = ("deepspeed", "pydantic", "hjson", "ninja", "py-cpuinfo", "msgpack", "einops", "psutil", "filelock")
METHODS = ("lora", "dora", "vera", "lr_lora", "lr_lora_fixed", "sine_lora", "lora_shift")
# (hidden, intermediate, layers, heads, kv heads, vocab): Llama-3.2-1B's shape, and a tiny one
SHAPES = {"1b": (2048, 8192, 16, 32, 8, 128256), "tiny": (64, 128, 2, 4, 2, 512)}
# Tokens per micro-batch row, rows per micro-batch, steps timed, steps before timing starts
WORKLOAD = {"1b": (1024, 4, 4, 2), "tiny": (32, 2, 2, 1)}
KERNEL_SHAPES = {"1b": (2048, 2048, 16, 1024), "tiny": (48, 40, 4, 16)}  # (d_out, d_in, r, tokens)


def llama(shape: str, device, dtype):
    """A randomly initialised Llama, built directly on `device` in `dtype` (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM._from_config(config, dtype=dtype).eval()


def token_rows(shape: str, n: int) -> list[dict]:
    import torch

    length, vocab = WORKLOAD[shape][0], SHAPES[shape][5]
    ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0)).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


def train_method(method: str, shape: str, device, precision: str) -> dict:
    """A few steps of `method` through jobs.train.train: tokens/s after warm-up, peak memory, losses."""
    import torch

    import adapters
    from jobs.contract import TrainArgs
    from jobs.train import DTYPES, train

    length, rows_per_batch, timed, warm = WORKLOAD[shape]
    model = adapters.apply(llama(shape, device, DTYPES[precision]), method)
    args = TrainArgs(lr=1e-4, max_steps=warm + timed, micro_batch_size=rows_per_batch, warmup_ratio=0, max_seq_len=length,
                     zero_stage=2, precision=precision)
    stamps: list[float] = []

    def on_step(step, loss, total, replayed):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    _reset_peak(device)
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=None, unk_token_id=None)
    model, result = train(model, tokenizer, token_rows(shape, rows_per_batch * (warm + timed)), args, seed=0, on_step=on_step, method=method)
    seconds = stamps[-1] - stamps[warm - 1]
    out = {"tokens_per_s": timed * rows_per_batch * length / seconds, "peak_mem_mb": result.peak_mem_mb, "losses": result.losses,
           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if not all(math.isfinite(x) for x in result.losses):
        raise RuntimeError(f"non-finite loss: {result.losses}")
    out.update(diagnostics(model))
    return out


def diagnostics(model) -> dict:
    """The final diagnostics of a trained model on its device: seconds, modules, all finite."""
    from jobs import diagnostics as diag

    started = time.perf_counter()
    record = diag.record(model, 1, "final")
    values = [v for m in record["modules"] for v in [m.get("stable_rank") or 0.0, *m.get("spectrum", [])]]
    if not record["modules"] or not all(math.isfinite(v) for v in values):
        raise RuntimeError("diagnostics: no module or a non-finite value")
    return {"diagnostics_s": time.perf_counter() - started, "diagnostics_modules": len(record["modules"])}


def check_kernels(shape: str, device) -> list[dict]:
    """Each elementwise φ's fused layer (MergedElementwiseLinear) on `device` in float32 against
    the float64 broadcasting reference on the CPU: output and every gradient, max relative error."""
    import torch
    import torch.nn.functional as F

    from adapters.elementwise import MergedElementwiseLinear, SincPhi, SinePhi, naive_delta

    d, k, r, tokens = KERNEL_SHAPES[shape]
    phis = {"lr_lora": SincPhi(50, 3.0, "paper", False, "inside"), "lr_lora_fixed": SincPhi(50, 3.0, "fixed", False, "inside"),
            "sine_lora": SinePhi(200.0, k)}
    gen = torch.Generator().manual_seed(0)
    x, W0, bias = torch.randn(tokens, k, generator=gen), torch.randn(d, k, generator=gen) / k**0.5, torch.randn(d, generator=gen)
    A, B, gy = torch.randn(r, k, generator=gen) / k**0.5, torch.randn(d, r, generator=gen) / r**0.5, torch.randn(tokens, d, generator=gen)
    rows = []
    for name, phi in phis.items():
        with torch.no_grad():
            for p in phi.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
        scales = phi.scales(1.0, A, B)
        results = []
        for where, dtype in ((device, torch.float32), (torch.device("cpu"), torch.float64)):
            module = phi.to(where, dtype)
            leaves = [t.to(where, dtype).requires_grad_() for t in (x, A, B)]
            params = module.params()
            if dtype == torch.float64:
                y = F.linear(leaves[0], W0.to(dtype) + naive_delta(leaves[1], leaves[2], module, params, *scales), bias.to(dtype))
            else:
                y = MergedElementwiseLinear.apply(leaves[0], W0.to(where, dtype), bias.to(where, dtype), leaves[1], leaves[2], module, *scales, *params)
            grads = torch.autograd.grad(y, leaves + list(params), gy.to(where, dtype))
            results.append([t.detach().cpu().double() for t in (y, *grads)])
        errors = [float((got - ref).norm() / ref.norm().clamp_min(1e-30)) for got, ref in zip(*results)]
        rows.append({"kernel": name, "max_rel_err": max(errors), "ok": max(errors) < 1e-3})
    return rows


def none_forward(shape: str, device, precision: str) -> dict:
    """A `none` cell's scoring step: a forward of the untouched backbone on the device."""
    import torch

    from jobs.train import DTYPES

    model = llama(shape, device, DTYPES[precision])
    batch = torch.tensor([r["input_ids"] for r in token_rows(shape, 2)], device=device)
    with torch.no_grad():
        logits = model(input_ids=batch).logits
    if logits.device.type != device.type or not bool(torch.isfinite(logits).all()):
        raise RuntimeError(f"logits on {logits.device} or not finite")
    return {"device": str(logits.device), "dtype": str(logits.dtype).removeprefix("torch.")}


def _reset_peak(device) -> None:
    import torch

    from jobs import memory

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        memory.reset_peak()


def run(device_name: str, shape: str, precision: str, methods: list[str]) -> dict:
    """Every part of the check; a part that raises is recorded as failed, the others still run."""
    import torch

    from jobs import backbones

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(backbones.extensions_dir()))
    device = torch.device(device_name)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "shape": shape,
                    "precision": precision, "torch": torch.__version__, "methods": {}, "kernels": [], "none": {}, "failures": []}
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is not None:
            methods = [*methods, "qlora"]
    for method in methods:
        try:
            report["methods"][method] = train_method(method, shape, device, precision)
        except Exception as err:  # the check goes on: every failure is in the table
            report["failures"].append(f"{method}: {type(err).__name__}: {err}")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for part, call in (("kernels", lambda: check_kernels(shape, device)), ("none", lambda: none_forward(shape, device, precision))):
        try:
            report[part] = call()
        except Exception as err:
            report["failures"].append(f"{part}: {type(err).__name__}: {err}")
    report["failures"] += [f"kernel {k['kernel']}: max relative error {k['max_rel_err']:.2e}" for k in report["kernels"] if not k["ok"]]
    return report


def table(report: dict) -> str:
    lora = report["methods"].get("lora", {})
    lines = [f"gpu-check on {report['device']} ({report['shape']} Llama, {report['precision']}, torch {report['torch']})", "",
             "| method | trainable | tok/s | × LoRA | peak MiB | × LoRA | final loss | diagnostics s |", "|---|---|---|---|---|---|---|---|"]
    for name, m in report["methods"].items():
        speed = m["tokens_per_s"] / lora["tokens_per_s"] if lora else float("nan")
        mem = m["peak_mem_mb"] / lora["peak_mem_mb"] if lora else float("nan")
        lines.append(f"| {name} | {m['trainable']:,} | {m['tokens_per_s']:,.0f} | {speed:.2f} | {m['peak_mem_mb']:,.0f} | {mem:.2f} | "
                     f"{m['losses'][-1]:.3f} | {m['diagnostics_s']:.1f} |")
    lines += ["", "| kernel vs float64 | max rel. error | ok |", "|---|---|---|"]
    lines += [f"| {k['kernel']} | {k['max_rel_err']:.2e} | {'yes' if k['ok'] else 'NO'} |" for k in report["kernels"]]
    if report["none"]:
        lines += ["", f"none forward: logits on {report['none']['device']} ({report['none']['dtype']})"]
    lines += ["", "FAILED:" if report["failures"] else "all checks passed", *report["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model instead of the 1B shape (CI, CPU)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--requirements", action="store_true", help="print the packages to install beside torch, transformers, peft")
    args = parser.parse_args(argv)
    if args.requirements:
        print(" ".join(REQUIREMENTS))
        return 0
    from jobs import quiet

    quiet.configure()
    report = run(args.device, "tiny" if args.tiny else "1b", args.precision, args.methods)
    args.out.write_text(json.dumps(report, indent=1))
    print(table(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

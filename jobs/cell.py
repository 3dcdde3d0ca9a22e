"""One cell, start to finish: load -> adapt -> train -> evaluate -> log to the cell's MLflow run.

`run_cell` is what the scheduler calls (in a Ray task) and what `python -m jobs.train CELL.json`
calls without Ray. It knows nothing about the sweep beyond the Cell it is given.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import torch

import adapters
from jobs import backbones, diagnostics, families, memory, provenance, quiet, tracking
from jobs.contract import Cell, JobResult
from jobs.train import placement, train


def run_cell(cell: Cell, tracking_uri: str, parent_run_id: str | None = None, checkpoint_dir: str | None = None) -> JobResult:
    """Train and score `cell`, logging everything to a child run; never raises for a failed cell.

    Checkpoints go to `checkpoint_dir/<run_key>` (default: the cache dir), where a rerun of a
    killed cell finds them; they are removed once the cell is FINISHED.
    In a multi-process cell (RANK set by the scheduler) only rank 0 logs and evaluates; the
    other ranks train their share of each batch and return.
    """
    quiet.configure()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(backbones.extensions_dir()))
    checkpoints = Path(checkpoint_dir or backbones.cache_dir() / "checkpoints") / cell.run_key
    if int(os.environ.get("RANK", "0")) != 0:
        return _train_other_rank(cell, checkpoints)
    run_id = None
    _reset_peak_memory()
    try:
        with tracking.cell_run(tracking_uri, cell, parent_run_id, {**_placement(), **provenance.environment()}) as run:
            run_id = run.run_id
            metrics = _train_and_score(cell, run, checkpoints)
        shutil.rmtree(checkpoints, ignore_errors=True)
        return JobResult(cell.run_key, "FINISHED", run_id, metrics)
    except Exception as err:  # recorded FAILED in MLflow by cell_run; the sweep goes on
        traceback.print_exc()
        return JobResult(cell.run_key, "FAILED", run_id, error=f"{type(err).__name__}: {err}")


def _placement() -> dict[str, str]:
    """Where this attempt runs, as run tags: the Ray node, the GPU ids Ray gave this process
    (CUDA_VISIBLE_DEVICES) and, for a multi-process cell, every rank's `node:gpus`. Empty
    outside Ray."""
    import ray

    if not ray.is_initialized():
        return {}
    tags = {"ray.node_id": ray.get_runtime_context().get_node_id(), "ray.gpu_ids": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    if "PEFTBENCH_PLACEMENT" in os.environ:
        tags["ray.rank_placement"] = os.environ["PEFTBENCH_PLACEMENT"]
    return tags


def _train_other_rank(cell: Cell, checkpoints: Path) -> JobResult:
    """A rank other than 0: train (the collectives need every rank), log nothing."""
    _reset_peak_memory()  # the cell's peak is the largest rank's: this rank's own, from now
    try:
        model, tokenizer, trainable, _ = _adapted(cell)
        if trainable:
            _train(cell, model, tokenizer, checkpoints, on_step=None)
        return JobResult(cell.run_key, "FINISHED")
    except Exception as err:
        traceback.print_exc()
        return JobResult(cell.run_key, "FAILED", error=f"rank {os.environ['RANK']}: {type(err).__name__}: {err}")


def _adapted(cell: Cell) -> tuple[torch.nn.Module, object, int, int]:
    """(backbone with the method applied, tokenizer, trainable parameters, backbone parameters).

    The backbone is loaded in the cell's precision on this rank's device, so a `none` cell also
    scores there."""
    family = families.of_regime(cell.regime)
    torch.manual_seed(cell.seed)  # a new classifier head is initialised from the cell's seed
    device, dtype = placement(cell.train.precision)
    model, tokenizer = backbones.load(cell.backbone, family.num_labels(cell.regime), dtype, device, cell.train.attn_implementation)
    total = sum(p.numel() for p in model.parameters())
    model = adapters.apply(model, cell.method, **cell.hparams)
    family.prepare(model)
    return model, tokenizer, sum(p.numel() for p in model.parameters() if p.requires_grad), total


def _train(cell: Cell, model, tokenizer, checkpoints: Path, on_step, run: tracking.CellRun | None = None):
    """Train on the regime's sample; with `run` (rank 0), record the sample's sha256 and dataset input."""
    family = families.of_regime(cell.regime)
    examples = family.training_examples(cell.regime, families.data_dir())
    if run is not None:
        provenance.log_data(run, "train", f"{cell.regime.name}/train", family.example_rows(examples), _data_source())
    return train(
        model, tokenizer, family.encode(examples, tokenizer, cell.train.max_seq_len), cell.train, cell.seed, on_step=on_step,
        method=cell.method, hparams=cell.hparams, checkpoint_dir=checkpoints, checkpoint_every=cell.checkpoint_every,
    )


def _train_and_score(cell: Cell, run: tracking.CellRun, checkpoints: Path) -> dict[str, float]:
    family = families.of_regime(cell.regime)
    model, tokenizer, trainable, total = _adapted(cell)
    metrics = {"params/trainable": trainable, "params/backbone": total, "params/trainable_pct": 100 * trainable / total}

    if trainable:
        model, result = _train(cell, model, tokenizer, checkpoints, _step_logger(run, model), run)
        metrics.update(
            {
                "train/final_loss": result.losses[-1],
                "train/steps": result.steps,
                "train/seconds": result.seconds,
                "train/resumed_from_step": result.resumed_from,
                "train/tokens_per_s": result.tokens_per_s,
                "train/peak_mem_mb": result.peak_mem_mb,
            }
        )
        if result.discarded:  # a checkpoint cut short or damaged: trained again from the last whole one
            run.set_tag("checkpoint.discarded", "; ".join(result.discarded))
        _log_diagnostics(run, model, result.steps, "final")
        with run.scratch_dir() as tmp:  # the trained state, loadable with adapters.load_adapter
            adapters.save_adapter(model, tmp)
            run.log_dir(tmp, "adapter")
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # score the plain merged model: no adapter overhead
    run.set_tag("peak_mem_source", "cuda_max_allocated" if torch.cuda.is_available() else "process_peak_rss")

    scores = family.evaluate(model, tokenizer, cell.tasks, families.data_dir(), cell.eval, cell.train.max_seq_len)
    scored = [{"task": task, **item} for task, items in scores.inputs.items() for item in items]
    provenance.log_data(run, "eval", f"{'+'.join(cell.tasks)}/eval", scored, _data_source())
    for task, values in scores.metrics.items():
        metrics.update({f"{task}/{name}": value for name, value in values.items()})
    metrics[family.average_metric] = sum(v[family.headline(t)] for t, v in scores.metrics.items()) / len(scores.metrics)
    run.log_metrics(metrics)
    for task, rows in scores.samples.items():
        run.log_text("\n".join(json.dumps(r) for r in rows) + "\n", f"eval/samples_{task}.jsonl")
    run.log_table([{"task": task, **r} for task, rows in scores.samples.items() for r in rows], "eval/items.json")
    run.log_text(json.dumps(scores.raw, indent=1, default=str), family.raw_artifact)
    return metrics


def _data_source() -> str:
    """Where the cell's data were read: the local data dir, else the hub."""
    return str(families.data_dir() or "https://huggingface.co/datasets")


def _step_logger(run: tracking.CellRun, model: torch.nn.Module):
    """Log the loss of every step, and the φ curves / shift maps after the first step and at
    mid-training (`analysis/early.json`, `analysis/middle.json`). Steps replayed from a
    checkpoint log their loss only: the weights in memory are no longer theirs."""

    def on_step(step: int, loss: float, total: int, replayed: bool) -> None:
        run.log_metric("train/loss", loss, step)
        if replayed:
            return
        if step == 0:
            _log_diagnostics(run, model, 1, "early", curves_only=True)
        elif step + 1 == max(2, total // 2):
            _log_diagnostics(run, model, step + 1, "middle", curves_only=True)

    return on_step


def _log_diagnostics(run: tracking.CellRun, model: torch.nn.Module, step: int, stage: str, curves_only: bool = False) -> None:
    """The adapter's diagnostics (stable rank, spectrum, φ, shift map) as `analysis/<stage>.json`."""
    record = diagnostics.record(model, step, stage, curves_only)
    if any(len(entry) > 2 for entry in record["modules"]):  # more than module name and shape
        run.log_text(json.dumps(record), f"analysis/{stage}.json")


_worker_has_run_a_cell = False


def _reset_peak_memory() -> None:
    """Start this cell's peak-memory reading afresh: a reused Ray worker's mark would still hold
    an earlier cell's peak. On CPU: drop what earlier cells left (gc, glibc's malloc_trim), then
    reset the kernel's high-water mark VmHWM to the current resident set (Linux: "5" written to
    /proc/self/clear_refs). Elsewhere the process's lifetime peak is what is left to read.
    What survives the collection (imports, library caches) is frozen (gc.freeze), so the next
    cell's collection scans only what this cell leaves behind, not every imported module. The
    first cell has nothing of an earlier one to drop (a flag, not gc.get_freeze_count(): that
    walks every frozen object). Costs: README, Measured."""
    global _worker_has_run_a_cell
    if _worker_has_run_a_cell:
        gc.collect()
    _worker_has_run_a_cell = True
    gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        memory.reset_peak()
    except OSError:
        pass


def main(argv: list[str]) -> None:
    """`python -m jobs.train CELL.json [--tracking-uri URI]`: run one cell without Ray."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=main.__doc__)
    parser.add_argument("cell", type=Path, help="a resolved cell as JSON (Cell.model_dump_json())")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--checkpoint-dir", default=None, help="checkpoints go to DIR/<run_key> (default: the cache dir)")
    args = parser.parse_args(argv)
    cell = Cell.model_validate_json(args.cell.read_text())
    result = run_cell(cell, tracking.tracking_uri(args.tracking_uri), checkpoint_dir=args.checkpoint_dir)
    print(json.dumps(result.__dict__, indent=1))
    sys.exit(0 if result.status == "FINISHED" else 1)

"""`plan` and `status`: what a sweep would run and what it has run, from the spec and MLflow
alone. Neither imports Ray, torch or lm-eval, so both answer in a moment."""

from __future__ import annotations

import statistics
import sys

from jobs.contract import Cell
from pipeline import cluster, spec, track


def plan(sweeps: list[spec.Sweep], tracking_uri: str | None = None, nodes: list[dict[str, float]] | None = None, where: str = "this machine") -> int:
    """Print every cell, whether the store already has it FINISHED, and its estimated cost; then
    how many cells run at once on `nodes` and the estimated makespan, the unfinished cells
    packed onto the nodes the way the scheduler places them. `sweeps`: the documents of one file."""
    sweep, cells = sweeps[0], spec.expand_all(sweeps)
    uri = track.tracking_uri(tracking_uri)
    finished = {run.data.tags["run_key"]: run for run in track.cell_runs(uri, sweep.name)}
    seconds_per_step = _seconds_per_step(finished.values())
    print(f"sweep {sweep.name}: {len(cells)} cells, {sum(c.run_key in finished for c in cells)} already finished ({uri})")
    print(f"{'run_key':16}  {'cell':40}  {'state':8}  {'steps':>6}  est. seconds")
    total, costs = 0.0, {}
    for cell in cells:
        steps = _steps(cell)
        rate = seconds_per_step.get((cell.backbone, cell.method))
        estimate = "-" if cell.run_key in finished else (f"{rate * steps:.0f}" if rate and steps else "?")
        if cell.run_key not in finished:
            costs[cell.run_key] = rate * steps if rate and steps else None
            total += costs[cell.run_key] or 0
        label = f"{cell.label}/{cell.backbone}/{cell.regime.name}/s{cell.seed}"
        print(f"{cell.run_key:16}  {label:40}  {'FINISHED' if cell.run_key in finished else 'todo':8}  {steps or '?':>6}  {estimate}")
    print(f"estimated training time left: {total:.0f} s of cell time (from earlier runs of the same backbone and method; ? = no history)")
    todo = [c for c in cells if c.run_key not in finished]
    if todo and nodes:
        known = [v for v in costs.values() if v is not None]
        guess = statistics.median(known) if known else None  # a cell without history costs what a typical one does
        at_once, makespan = cluster.simulate([(c, costs[c.run_key] or guess or 1.0) for c in todo], nodes, sweep.max_concurrent)
        print(f"on {where} ({len(nodes)} nodes): {at_once} cells at once; estimated makespan "
              + (f"{makespan:.0f} s" if guess else "? s (no history: run a few cells first)"))
    return 0


def status(sweep_name: str, tracking_uri: str | None = None) -> int:
    """Print done / running / failed / remaining for the sweep's newest invocation, from MLflow alone."""
    uri = track.tracking_uri(tracking_uri)
    cells = track.sweep_cells(uri, sweep_name)
    if cells is None:
        print(f"error: no sweep named {sweep_name!r} in {uri}", file=sys.stderr)
        return 2
    states: dict[str, set[str]] = {}
    for run in track.cell_runs(uri, sweep_name, status=None):
        states.setdefault(run.data.tags["run_key"], set()).add(run.info.status)
    counts = {"done": 0, "running": 0, "failed": 0, "remaining": 0}
    for cell in cells:
        seen = states.get(cell["run_key"], set())
        state = "done" if "FINISHED" in seen else "running" if "RUNNING" in seen else "failed" if "FAILED" in seen else "remaining"
        counts[state] += 1
    print(f"sweep {sweep_name}: {len(cells)} cells: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0


def _steps(cell: Cell) -> int | None:
    """Optimizer steps the cell will take (None when the regime uses the full data, uncounted here)."""
    if cell.train.max_steps:
        return cell.train.max_steps
    if cell.regime.n_examples == "full":
        return None
    per_step = cell.train.micro_batch_size * cell.train.grad_accum * cell.resources.processes
    return max(1, cell.regime.n_examples // per_step) * cell.train.epochs


def _seconds_per_step(runs) -> dict[tuple[str, str], float]:
    """Median training seconds per step of finished runs, by (backbone, method)."""
    rates: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        m, p = run.data.metrics, run.data.params
        if m.get("train/steps"):
            rates.setdefault((p["backbone"], p["method"]), []).append(m["train/seconds"] / m["train/steps"])
    return {k: statistics.median(v) for k, v in rates.items()}

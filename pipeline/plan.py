"""`plan` and `status`: what a sweep would run and what it has run, from the spec and MLflow
alone. Neither imports Ray, torch or lm-eval, so both answer in a moment."""

from __future__ import annotations

import math
import statistics
import sys
from statistics import NormalDist

from jobs import families
from jobs.contract import Cell
from pipeline import cluster, spec, track


def plan(sweeps: list[spec.Sweep], tracking_uri: str | None = None, nodes: list[dict[str, float]] | None = None, where: str = "this machine",
         target_mde: float | None = None) -> int:
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
    print_power(cells, list(finished.values()), target_mde)
    return 0


# Planning power before anything runs needs a guess of how often two methods' answers differ;
# it is an assumption, printed with the result. A normal approximation: no scipy in `plan`.
DISAGREEMENT = 0.25
ITEM_METRICS = ("acc",)  # headline metrics with per-item 0/1 scores; others are tested over seeds only


def print_power(cells: list[Cell], runs: list, target_mde: float | None, alpha: float = 0.05, power: float = 0.8) -> None:
    """Per backbone × regime: the MDE of a method's Average against the baseline at 80% power and
    α/m (m: the report's comparisons), from the item counts and, where the store holds earlier
    runs of the block, their seed spread; with `target_mde`, the seeds that reach it."""
    blocks: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        blocks.setdefault((cell.backbone, cell.regime.name), []).append(cell)
    methods = {c.label for c in cells}
    tasks = {t for c in cells for t in c.tasks}
    m = max(1, (len(methods) - 1) * (len(tasks) + 1) * len(blocks))
    z = NormalDist().inv_cdf(1 - alpha / m / 2) + NormalDist().inv_cdf(power)
    print(f"power: MDE of a method's Average vs the baseline, 80% power at α/m = {alpha}/{m} (normal approximation; "
          f"methods assumed to disagree on {DISAGREEMENT:.0%} of items; seed spread from earlier runs of the block)")
    for (backbone, regime), members in blocks.items():
        block_tasks = sorted({t for c in members for t in c.tasks})
        seeds = len({c.seed for c in members})
        limit = members[0].eval.limit
        spread, n_runs = _seed_spread(runs, backbone, regime, block_tasks)
        per_item = limit is not None and all(families.of(t).headline(t) in ITEM_METRICS for t in block_tasks)
        where = f"  {backbone} · {regime}: {len(block_tasks)} task(s) × {limit or 'all'} items, {seeds} seed(s)"
        known = f"seed spread {spread:.2f} points from {n_runs} earlier runs" if n_runs else "no earlier runs: item noise only"
        if not per_item:
            floor = 2.0 ** (1 - seeds)
            why = "without per-item 0/1 scores the test is the sign-flip over seeds"
            reach = "" if floor <= alpha / m else f"; {seeds} seeds cannot reach α/m (smallest p {floor:.2g})"
            mde = z * spread * math.sqrt(2 / seeds) if n_runs and not reach else math.inf
            print(f"{where}: MDE {'∞' if math.isinf(mde) else f'{mde:.2f} points'} ({why}{reach}; {known})")
            continue
        item_var = sum(DISAGREEMENT * 100**2 / limit for _ in block_tasks) / len(block_tasks) ** 2
        mde = z * math.sqrt(item_var + 2 * spread**2 / seeds)
        print(f"{where}: MDE {mde:.2f} points ({known})")
        if target_mde is not None:
            print("    " + _seeds_for(target_mde, z, item_var, spread, n_runs))


def _seeds_for(target: float, z: float, item_var: float, spread: float, n_runs: int) -> str:
    """How many seeds bring the MDE to `target` points, or why none can."""
    floor = z * math.sqrt(item_var)
    if floor > target:
        return f"--target-mde {target:g}: out of reach with these items (the items alone give {floor:.2f} points): score more items (eval.limit)"
    if not n_runs:
        return f"--target-mde {target:g}: 2 seeds (no seed spread known yet; run them and plan again)"
    seeds = max(2, math.ceil(2 * spread**2 / ((target / z) ** 2 - item_var)))
    return f"--target-mde {target:g}: {seeds} seeds"


def _seed_spread(runs: list, backbone: str, regime: str, tasks: list[str]) -> tuple[float, int]:
    """(the typical std over seeds of a method's task average, in points; how many runs it comes from)
    from the store's finished runs of the block."""
    by_method: dict[str, list[float]] = {}
    for run in runs:
        p, metrics = run.data.params, run.data.metrics
        if p.get("backbone") != backbone or p.get("regime.name") != regime:
            continue
        scores = [metrics.get(f"{t}/{families.of(t).headline(t)}") for t in tasks]
        if all(s is not None and math.isfinite(s) for s in scores):
            by_method.setdefault(p.get("label", p.get("method")), []).append(100 * sum(scores) / len(scores))
    spreads = [statistics.stdev(v) for v in by_method.values() if len(v) > 1]
    return (statistics.fmean(spreads), sum(len(v) for v in by_method.values() if len(v) > 1)) if spreads else (0.0, 0)


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

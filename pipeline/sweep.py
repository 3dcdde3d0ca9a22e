"""`run`: spec -> Ray -> MLflow -> table (`plan` and `status`, which run nothing, are pipeline.plan).

run: spec -> cells -> skip those already FINISHED -> Ray -> comparison tables and report.html
logged to the parent run.
Only FINISHED runs count as done and only they reach the table, so a rerun after a crash
(RUNNING or FAILED runs left behind) redoes exactly the unfinished cells.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.contract import Cell
from pipeline import cluster, compare, provenance, schedule, spec, track


def run(spec_path: str, address: str | None = None, tracking_uri: str | None = None, checkpoint_dir: str | None = None) -> int:
    """Run the sweep (every document of the file); print the table; return the exit code (1 if any cell failed)."""
    sweeps = spec.load_all(spec_path)
    sweep = sweeps[0]
    uri = track.tracking_uri(tracking_uri)
    cells = spec.expand_all(sweeps)
    parent, failed = execute(cells, sweep, Path(spec_path).read_text(), uri, address, checkpoint_dir)
    results = compare.results_frame(uri, sweep.name, {c.run_key for c in cells})
    if results.empty:
        print("(no finished cells: no table)")
    else:
        items = compare.items_frame(uri, results)
        texts = compare.log_report(uri, parent, results, items)
        compare.log_html_report(uri, parent, sweep.name, results, items, texts["html"])
        print(texts["md"])
    track.end_run(uri, parent, ok=not failed)
    return 1 if failed else 0


def execute(
    cells: list[Cell],
    sweep: spec.Sweep,
    spec_text: str,
    uri: str,
    address: str | None,
    checkpoint_dir: str | None,
    skip_finished: bool = True,
    tags: dict[str, str] | None = None,
) -> tuple[str, list]:
    """Open a parent run, run the cells on Ray (by default not those already FINISHED in the
    store) and return (the parent run's id, left open for the caller's report; the failed
    results). Failed cells are listed on stderr. The parent run holds the code's commit
    (`provenance.code_version`), which each cell run copies."""
    done = track.finished_run_keys(uri, sweep.name) if skip_finished else set()
    todo = [c for c in cells if c.run_key not in done]
    print(f"sweep {sweep.name}: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run", file=sys.stderr)
    print(f"tracking: {uri}", file=sys.stderr)

    parent = track.start_sweep_run(uri, sweep.name, spec_text, [_describe(c) for c in cells], {**provenance.code_version(), **(tags or {})})
    results = []
    if todo:
        cluster.connect(address)
        results = schedule.run_cells(todo, uri, parent, sweep.max_retries, sweep.max_concurrent, checkpoint_dir, skipped=len(cells) - len(todo))
    failed = [r for r in results if r.status != "FINISHED"]
    if failed:
        labels = {c.run_key: f"{c.label}/{c.backbone}/{c.regime.name}/s{c.seed}" for c in cells}
        print(f"{len(failed)} cell(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"FAILED {r.run_key} {labels[r.run_key]}: {r.error}", file=sys.stderr)
    return parent, failed


def _describe(cell: Cell) -> dict:
    return {"run_key": cell.run_key, "method": cell.label, "backbone": cell.backbone, "regime": cell.regime.name, "seed": cell.seed}



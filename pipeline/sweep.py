"""`pipeline run`: a sweep file in, finished MLflow runs and a comparison table out.

spec -> cells -> skip those already FINISHED -> Ray -> table logged to the parent run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import compare, schedule, spec, track


def run(spec_path: str, address: str | None = None, tracking_uri: str | None = None) -> int:
    """Run the sweep; print the table; return the exit code (1 if any cell failed)."""
    sweep = spec.load(spec_path)
    cells = spec.expand(sweep)
    uri = track.tracking_uri(tracking_uri)
    done = track.finished_run_keys(uri, sweep.name)
    todo = [c for c in cells if c.run_key not in done]
    print(f"sweep {sweep.name}: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run", file=sys.stderr)
    print(f"tracking: {uri}", file=sys.stderr)

    parent = track.start_sweep_run(uri, sweep.name, Path(spec_path).read_text())
    results = []
    if todo:
        schedule.connect(address)
        results = schedule.run_cells(todo, uri, parent)
    failed = [r for r in results if r.status != "FINISHED"]

    table = compare.summary_table(compare.results_frame(uri, sweep.name, {c.run_key for c in cells}))
    markdown = compare.to_markdown(table)
    track.log_text(uri, parent, markdown, "comparison.md")
    track.log_text(uri, parent, compare.to_html(table), "comparison.html")
    track.end_run(uri, parent, ok=not failed)
    print(markdown)
    for r in failed:
        print(f"FAILED {r.run_key}: {r.error}", file=sys.stderr)
    return 1 if failed else 0

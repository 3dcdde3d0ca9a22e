"""`python -m pipeline.bench`: how close the scheduler comes to perfect packing.

Runs a sweep of short tiny-llama cells (20 by default) on a local Ray with 2 CPUs and prints
makespan / ideal, where ideal = the sum of the cells' own times (their MLflow runs, start to
end) / the slots (cells that fit at once). Ray's start-up is outside the makespan; everything
else is inside it: each worker's one-time start (its process and the imports of torch,
DeepSpeed, transformers and lm-eval; workers are reused from cell to cell)
and the per-cell dispatch. The overhead lines say how much each is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """
name: bench
backbones: [tiny-llama]
methods:
  - name: lora
    hparams: {{r: [2, 4, 8, 16]}}
tasks: [arc_easy]
regimes:
  - name: cs-16
    tasks: [arc_easy]
    n_examples: 16
seeds: {seeds}
train: {{lr: 1.0e-3, micro_batch_size: 4, max_steps: {steps}, max_seq_len: 96}}
eval: {{limit: 8, batch_size: 8}}
resources: {{cpus: 1}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per grid point (4 grid points; default 5: 20 cells)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per cell")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray (one cell per CPU)")
    args = parser.parse_args(argv)

    import ray

    from pipeline import cluster, schedule, spec, track

    with tempfile.TemporaryDirectory(prefix="peftbench-bench-") as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(SWEEP.format(seeds=list(range(1, args.seeds + 1)), steps=args.steps))
        cells = spec.expand(spec.load(path))
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        parent = track.start_sweep_run(uri, "bench", path.read_text(), [])
        cluster.connect("local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            started = time.time()
            results = schedule.run_cells(cells, uri, parent)
            makespan = time.time() - started
        finally:
            ray.shutdown()
        failed = [r for r in results if r.status != "FINISHED"]
        if failed:
            print(f"error: {len(failed)} of {len(cells)} cells failed, first: {failed[0].error}", file=sys.stderr)
            return 1
        runs = track.cell_runs(uri, "bench")
        cell_seconds = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
        first_starts = sorted(r.info.start_time / 1000 - started for r in runs)[:args.cpus]
    slots = args.cpus  # one CPU per cell
    ideal = sum(cell_seconds) / slots
    warm_up = sum(first_starts) / slots
    print(f"{len(cells)} cells on {slots} slots: makespan {makespan:.1f} s, ideal {ideal:.1f} s "
          f"(cell times {min(cell_seconds):.1f}-{max(cell_seconds):.1f} s, mean {ideal * slots / len(cells):.1f} s)")
    print(f"per-cell overhead: {(makespan * slots - sum(cell_seconds)) / len(cells):.2f} s of slot time, of which each worker's "
          f"one-time start (process, imports) before its first cell: {', '.join(f'{t:.1f}' for t in first_starts)} s")
    print(f"makespan / ideal = {makespan / ideal:.3f} (target <= 1.1); without the workers' one-time start: {(makespan - warm_up) / ideal:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

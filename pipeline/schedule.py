"""Ray scheduling: one Ray task per cell, resources from the cell, live progress in the driver.

The driver decides what runs where; the task (`jobs.cell.run_cell`) knows nothing about the
sweep. Each task runs in a fresh worker process (`max_calls=1`), so a cell's torch.distributed
group, peak-memory reading and memory are its own.
"""

from __future__ import annotations

import os

import ray
from tqdm import tqdm

from jobs.cell import JobResult, run_cell
from pipeline.spec import Cell


def connect(address: str | None) -> None:
    """Join the cluster at `address` / $RAY_ADDRESS, or start a local Ray instance.

    Jobs inherit the data and cache locations the driver resolved, so a local run and a
    `ray job submit` run read the same files.
    """
    env = {k: os.environ[k] for k in ("PEFTBENCH_DATA", "PEFTBENCH_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if k in os.environ}
    env["TQDM_DISABLE"] = "1"  # the driver's bar is the progress display; job bars would interleave
    if ray.is_initialized():
        return
    ray.init(address=address or os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": env}, log_to_driver=True, configure_logging=False)


def run_cells(cells: list[Cell], tracking_uri: str, parent_run_id: str | None) -> list[JobResult]:
    """Run every cell as a Ray task; return their results as they finish, with a progress bar."""
    remote = ray.remote(max_calls=1, max_retries=0)(run_cell)
    pending = {}
    for cell in cells:
        task = remote.options(num_cpus=cell.resources.cpus, num_gpus=cell.resources.gpus)
        pending[task.remote(cell, tracking_uri, parent_run_id)] = cell
    results = []
    with tqdm(total=len(cells), desc="cells", unit="cell", dynamic_ncols=True) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            result = ray.get(done[0])
            results.append(result)
            failed = sum(r.status != "FINISHED" for r in results)
            bar.set_postfix(running=min(len(pending), _slots()), failed=failed, last=f"{cell.label}/s{cell.seed}")
            bar.update()
    return results


def _slots() -> int:
    return int(ray.cluster_resources().get("CPU", 1))

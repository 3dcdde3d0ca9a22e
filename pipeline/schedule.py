"""Ray scheduling: one Ray task per cell, resources from the cell, retries, live progress.

The driver decides what runs where; the task (`jobs.cell.run_cell`) knows nothing about the
sweep. Each task runs in a fresh worker process (`max_calls=1`), so a cell's torch.distributed
group, peak-memory reading and memory are its own. Retries are the driver's, not Ray's, so a
cell that raised and a cell whose worker was killed are retried the same way, and the killed
attempt's MLflow run is closed FAILED with the reason.
"""

from __future__ import annotations

import os
from collections import Counter, deque

import ray
import torch
from tqdm import tqdm

from jobs.cell import JobResult, run_cell
from pipeline import track
from pipeline.spec import Cell


def connect(address: str | None) -> None:
    """Join the cluster at `address` / $RAY_ADDRESS, or start a local Ray instance (`local`,
    so that a cluster someone else started on this machine is never joined by accident).

    Jobs inherit the data and cache locations the driver resolved, so a local run and a
    `ray job submit` run read the same files.
    """
    env = {k: os.environ[k] for k in ("PEFTBENCH_DATA", "PEFTBENCH_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if k in os.environ}
    env["TQDM_DISABLE"] = "1"  # the driver's bar is the progress display; job bars would interleave
    if ray.is_initialized():
        return
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", runtime_env={"env_vars": env}, log_to_driver=True, configure_logging=False)


def nodes(address: str | None) -> tuple[list[dict[str, float]], str]:
    """(CPU/GPU totals per node, a name for them): the cluster's when one is named or already
    joined, else this machine's, which is what a local Ray would get. Starts no Ray."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address or ray.is_initialized():
        connect(address)
        return [n["Resources"] for n in ray.nodes() if n["Alive"]], f"the Ray cluster at {address or ray.get_runtime_context().gcs_address}"
    return [{"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}], "this machine"


def run_cells(
    cells: list[Cell],
    tracking_uri: str,
    parent_run_id: str | None,
    max_retries: int = 0,
    max_concurrent: int | None = None,
    checkpoint_dir: str | None = None,
    skipped: int = 0,
) -> list[JobResult]:
    """Run every cell as a Ray task, at most `max_concurrent` at once, retrying failures;
    return each cell's last result. The bar counts skipped (already finished) cells as done."""
    remote = ray.remote(max_calls=1, max_retries=0)(run_cell)
    queue, pending, attempts, results = deque(cells), {}, Counter(), []
    limit = max_concurrent or len(cells)
    with tqdm(total=len(cells) + skipped, initial=skipped, desc="cells", unit="cell", dynamic_ncols=True) as bar:
        while queue or pending:
            while queue and len(pending) < limit:
                cell = queue.popleft()
                task = remote.options(num_cpus=cell.resources.cpus, num_gpus=cell.resources.gpus)
                pending[task.remote(cell, tracking_uri, parent_run_id, checkpoint_dir)] = cell
            [ref], _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ref)
            result = _result(ref, cell, tracking_uri, parent_run_id)
            attempts[cell.run_key] += 1
            retry = result.status != "FINISHED" and attempts[cell.run_key] <= max_retries and not result.error.startswith("DivergedError")
            if retry:  # resumes from the cell's last checkpoint, if it wrote one
                queue.append(cell)
            else:
                results.append(result)
                bar.update()
            failed = sum(r.status != "FINISHED" for r in results)
            bar.set_postfix(
                done=len(results) - failed, running=min(len(pending), _slots()), failed=failed, skipped=skipped,
                queued=len(queue), last=f"{cell.label}/s{cell.seed}{' retrying' if retry else ''}",
            )
    return results


def _result(ref, cell: Cell, tracking_uri: str, parent_run_id: str | None) -> JobResult:
    """The job's own result, or FAILED with the reason when its worker died (killed, out of
    memory) before it could record one."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        reason = f"worker died: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        track.fail_running(tracking_uri, cell, parent_run_id, reason)
        return JobResult(cell.run_key, "FAILED", error=reason)


def _slots() -> int:
    return int(ray.cluster_resources().get("CPU", 1))

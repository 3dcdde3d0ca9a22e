"""Ray scheduling: one Ray task per cell, resources from the cell, retries, live progress.

The driver decides what runs where; the task (`jobs.cell.run_cell`) knows nothing about the
sweep. One-process CPU cells reuse Ray's worker processes (Ray's default for CPU tasks), so
torch, DeepSpeed and lm-eval are imported once per worker, not once per cell (a fresh process per
cell pays them again: `python -m pipeline.bench`, README, Measured); the cell resets the
process's peak-memory mark when it starts (jobs.cell). A GPU cell gets a fresh process
(`max_calls=1`), which hands the device back whole. A cell with `processes: N` runs as N rank
actors in one placement group (STRICT_PACK: all ranks on one node, so NCCL stays within it),
gloo on CPU and NCCL on GPU, with the rendezvous address and each rank's device taken from where
Ray placed it. Retries are the driver's, not Ray's, so a cell that raised, a cell whose worker
was killed and a cell whose node died are retried the same way (resuming from the cell's last
checkpoint), and the dead attempt's MLflow run is closed FAILED with the reason.
"""

from __future__ import annotations

import os
import socket
import sys
from collections import Counter

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tqdm import tqdm

from jobs.contract import Cell, JobResult
from pipeline import track
from pipeline.cluster import demand


def run_cells(
    cells: list[Cell],
    tracking_uri: str,
    parent_run_id: str | None,
    max_retries: int = 0,
    max_concurrent: int | None = None,
    checkpoint_dir: str | None = None,
    skipped: int = 0,
) -> list[JobResult]:
    """Run every cell as a Ray task (or, with `processes` > 1, a group of rank actors), at most
    `max_concurrent` at once, retrying failures; return each cell's last result.

    A cell is submitted only when the cluster's CPUs and GPUs not held by this sweep's running
    cells cover it, so what is in flight is what runs and the display's `running` is true.
    The bar counts skipped (already finished) cells as done; its remaining time is the ETA.
    """
    # CPU cells reuse workers; a GPU cell gets a fresh process, which returns the device whole
    reused, fresh = ray.remote(max_retries=0)(run_cell), ray.remote(max_calls=1, max_retries=0)(run_cell)
    grouped = ray.remote(num_cpus=0, max_retries=0)(_run_ranks)
    queue, pending, groups, attempts, results = list(cells), {}, {}, Counter(), []
    limit = max_concurrent or len(cells)
    # In a log (`ray job logs`, CI) a redraw every second would flood it: every 30 s there.
    interval = 0.1 if sys.stderr.isatty() else 30
    with tqdm(total=len(cells) + skipped, initial=skipped, desc="cells", unit="cell", dynamic_ncols=True, mininterval=interval) as bar:
        while queue or pending:
            while len(pending) < limit and (cell := _next_fitting(queue, pending.values())):
                queue.remove(cell)
                res = cell.resources
                if res.processes == 1:
                    ref = (fresh if res.gpus else reused).options(num_cpus=res.cpus, num_gpus=res.gpus).remote(cell, tracking_uri, parent_run_id, checkpoint_dir)
                else:
                    bundle = {k: v for k, v in (("CPU", res.cpus), ("GPU", res.gpus)) if v}
                    group = placement_group([bundle] * res.processes, strategy="STRICT_PACK")
                    ref = grouped.remote(cell, group, tracking_uri, parent_run_id, checkpoint_dir)
                    groups[ref] = group
                pending[ref] = cell
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            last, ended = "", 0
            for ref in ready:
                cell = pending.pop(ref)
                result = _result(ref, cell, tracking_uri, parent_run_id)
                if ref in groups:  # frees the reservation; ends any rank still alive
                    remove_placement_group(groups.pop(ref))
                attempts[cell.run_key] += 1
                retry = result.status != "FINISHED" and attempts[cell.run_key] <= max_retries and not result.error.startswith("DivergedError")
                if retry:  # resumes from the cell's last checkpoint, if it wrote one
                    queue.append(cell)
                else:
                    results.append(result)
                    ended += 1
                last = f"{cell.label}/s{cell.seed}{' retrying' if retry else ''}"
            failed = sum(r.status != "FINISHED" for r in results)
            # The counts first, then the count of cells: a redraw never shows one without the other.
            bar.set_postfix(done=len(results) - failed, running=len(pending), failed=failed, skipped=skipped, queued=len(queue), **({"last": last} if last else {}), refresh=False)
            if ended:
                bar.update(ended)
            elif interval < 1:
                bar.refresh()
    return results


def _next_fitting(queue: list[Cell], running) -> Cell | None:
    """The first queued cell whose CPUs and GPUs are free now (the first queued one when none
    runs: what a cell needs was checked against the cluster before the sweep started)."""
    running = list(running)
    if not queue or not running:
        return queue[0] if queue else None
    total = ray.cluster_resources()
    for cell in queue:
        if all(demand(cell, kind) + sum(demand(c, kind) for c in running) <= total.get(kind, 0) for kind in ("CPU", "GPU")):
            return cell
    return None


def run_cell(*args) -> JobResult:
    """`jobs.cell.run_cell`, imported where it runs: the driver never loads torch or DeepSpeed.
    Same name, so a cell's worker is still `ray::run_cell` in `ray status` and the dashboard."""
    from jobs import cell

    return cell.run_cell(*args)


@ray.remote(max_restarts=0, max_task_retries=0)
class _Rank:
    """One DeepSpeed rank of a multi-process cell, in a worker process of its own."""

    def place(self) -> tuple[str, list[str], int, str]:
        """(this node's address, the GPU ids Ray gave this rank, a free port on this node, the node's id)."""
        address = ray.util.get_node_ip_address()
        return address, [str(g) for g in ray.get_gpu_ids()], free_port(address), ray.get_runtime_context().get_node_id()

    def run(self, env: dict[str, str], *args) -> JobResult:
        os.environ.update(env)
        return run_cell(*args)


def _run_ranks(cell: Cell, group: PlacementGroup, tracking_uri: str, parent_run_id: str | None, checkpoint_dir: str | None) -> JobResult:
    """Run a cell's ranks, one actor per bundle of its placement group, and return rank 0's
    result. A rank that fails stops the others (they would wait in a collective forever); a
    rank whose process died raises, so the driver records the cell as a dead worker."""
    ray.get(group.ready())
    ranks = [
        _Rank.options(num_cpus=cell.resources.cpus, num_gpus=cell.resources.gpus,
                      scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)).remote()
        for i in range(cell.resources.processes)
    ]
    try:
        places = ray.get([rank.place.remote() for rank in ranks])
        placement = " ".join(f"{node_id[:8]}:{','.join(gpus)}" for _, gpus, _, node_id in places)  # every rank's node and GPUs, for the run's tags
        envs = [env | {"PEFTBENCH_PLACEMENT": placement} for env in rank_env([p[:3] for p in places])]
        running = {rank.run.remote(env, cell, tracking_uri, parent_run_id, checkpoint_dir): i for i, (rank, env) in enumerate(zip(ranks, envs))}
        results = {}
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            results[running.pop(ref)] = result = ray.get(ref)
            if result.status != "FINISHED":
                break
    finally:
        for rank in ranks:
            ray.kill(rank)
    if 0 in results:
        return results[0]
    failed = next(r for r in results.values() if r.status != "FINISHED")
    track.fail_running(tracking_uri, cell, parent_run_id, failed.error)  # rank 0 was stopped mid-run
    return JobResult(cell.run_key, "FAILED", error=failed.error)


def free_port(host: str) -> int:
    """A TCP port nobody listens on right now, for a rendezvous on `host`."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rank_env(places: list[tuple[str, list[str], int]]) -> list[dict[str, str]]:
    """torch.distributed variables per rank from where Ray placed each: rank 0's node and port
    for the rendezvous. On GPU each rank keeps the CUDA_VISIBLE_DEVICES Ray gave it (its own
    GPU) and LOCAL_RANK 0 names that device: widening the visible set afterwards would not reach
    a CUDA runtime the worker's imports already started. On CPU, LOCAL_RANK is the rank's place
    on its node."""
    master, _, port = places[0]
    envs = []
    for rank, (node, gpus, _) in enumerate(places):
        neighbours = [r for r, p in enumerate(places) if p[0] == node]
        envs.append({"RANK": str(rank), "WORLD_SIZE": str(len(places)), "LOCAL_RANK": "0" if gpus else str(neighbours.index(rank)),
                     "LOCAL_WORLD_SIZE": str(len(neighbours)), "MASTER_ADDR": master, "MASTER_PORT": str(port)})
    return envs


def _result(ref, cell: Cell, tracking_uri: str, parent_run_id: str | None) -> JobResult:
    """The job's own result, or FAILED with the reason when its worker died (killed, out of
    memory) before it could record one."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        reason = f"worker died: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        track.fail_running(tracking_uri, cell, parent_run_id, reason)
        return JobResult(cell.run_key, "FAILED", error=reason)

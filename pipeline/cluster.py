"""What the cluster holds and how cells pack onto it, without Ray: `validate` and `plan` use this.

A cell's ranks all run on one node (the scheduler places them STRICT_PACK), so a cell fits a
node when that node alone has its CPUs and GPUs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

from jobs import families, quiet
from jobs.contract import Cell


def fits(node: dict[str, float], cpus: float, gpus: float) -> bool:
    return node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus


def connect(address: str | None, **local) -> None:
    """Join the cluster at `address` / $RAY_ADDRESS, or start a local Ray instance (`local`,
    so that a cluster someone else started on this machine is never joined by accident), with
    `local` as further ray.init arguments for it (the bench's num_cpus).

    Jobs inherit the data and cache locations the driver resolved, so a local run and a
    `ray job submit` run read the same files (a job's workers run from a copy of the working
    dir, where "../shared/data beside the repo" is not). A cluster's workers get them through
    the job's runtime env; variables the submitted job's own runtime env sets are left to it
    (Ray refuses to merge two values of one variable). A local instance's workers are children
    of the raylet that `ray.init` starts, so they get them through the environment it inherits
    instead: a job with a runtime env cannot use the workers Ray prestarts at start-up, and each
    new worker's runtime env set-up costs time (`python -m pipeline.bench`; README, Measured).
    """
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in ("PEFTBENCH_DATA", "PEFTBENCH_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", quiet.VERBOSE_ENV) if k in os.environ}
    if families.data_dir():
        env["PEFTBENCH_DATA"] = str(families.data_dir())
    env["TQDM_DISABLE"] = "1"  # the driver's bar is the progress display; job bars would interleave
    quiet.configure()  # again: importing Ray set its loggers' levels
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        with mock.patch.dict(os.environ, env):  # only while Ray starts: the driver's own bar must stay on
            ray.init(address="local", **{"log_to_driver": quiet.verbose(), "configure_logging": False, **local})
        return
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
    env = {k: v for k, v in env.items() if k not in (job.get("env_vars") or {})}
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=quiet.verbose(), configure_logging=False)


def nodes(address: str | None, described=None) -> tuple[list[dict[str, float]], str]:
    """(CPU/GPU totals per node, a name for them): the cluster's when one is named or already
    joined, else the `described` one (a spec's ClusterSpec, for planning), else this machine's,
    which is what a local Ray would get. Starts no Ray."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address or _ray_running():
        import ray

        connect(address)
        return [n["Resources"] for n in ray.nodes() if n["Alive"]], f"the Ray cluster at {address or ray.get_runtime_context().gcs_address}"
    if described is not None:
        return described.totals(), "the spec's cluster"
    return [{"CPU": os.cpu_count() or 1, "GPU": _local_gpus()}], "this machine"


def _ray_running() -> bool:
    """Whether this process already joined a Ray cluster (without importing Ray to ask)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _local_gpus() -> int:
    """NVIDIA GPUs this process may use, as Ray would count them: the CUDA_VISIBLE_DEVICES
    entries when set, else the /dev/nvidiaN devices (no torch or CUDA import needed)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return len([p for p in Path("/dev").glob("nvidia*") if p.name.removeprefix("nvidia").isdigit()])


def demand(cell: Cell, kind: str) -> float:
    res = cell.resources
    return (res.cpus if kind == "CPU" else res.gpus) * res.processes


def simulate(cells: list[tuple[Cell, float]], nodes: list[dict[str, float]], max_concurrent: int | None) -> tuple[int, float]:
    """(most cells running at once, makespan) of running (cell, seconds) pairs in order as
    run_cells does, each cell whole on the first node with room (as STRICT_PACK places it)."""
    free = [{"CPU": n.get("CPU", 0), "GPU": n.get("GPU", 0)} for n in nodes]
    queue, running, now, peak = list(cells), [], 0.0, 0
    while queue:
        for cell, seconds in list(queue):
            node = next((n for n in free if fits(n, demand(cell, "CPU"), demand(cell, "GPU"))), None)
            if node is None or len(running) == (max_concurrent or len(cells)):
                continue
            node["CPU"] -= demand(cell, "CPU")
            node["GPU"] -= demand(cell, "GPU")
            running.append((now + seconds, id(node), node, cell))
            queue.remove((cell, seconds))
        if not running:
            raise ValueError(f"cell {queue[0][0].run_key} fits on no node")
        peak = max(peak, len(running))
        running.sort(key=lambda r: r[:2])
        now, _, node, cell = running.pop(0)
        node["CPU"] += demand(cell, "CPU")
        node["GPU"] += demand(cell, "GPU")
    return peak, max([now] + [r[0] for r in running])

"""What the cluster holds and how cells pack onto it, without Ray: `validate` and `plan` use this.

A cell's ranks all run on one node (the scheduler places them STRICT_PACK), so a cell fits a
node when that node alone has its CPUs and GPUs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jobs.contract import Cell


def fits(node: dict[str, float], cpus: float, gpus: float) -> bool:
    return node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus


def nodes(address: str | None, described=None) -> tuple[list[dict[str, float]], str]:
    """(CPU/GPU totals per node, a name for them): the cluster's when one is named or already
    joined, else the `described` one (a spec's ClusterSpec, for planning), else this machine's,
    which is what a local Ray would get. Starts no Ray."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address or _ray_running():
        import ray

        from pipeline.schedule import connect

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

"""The scheduler on a simulated multi-node GPU cluster: Ray's own `cluster_utils.Cluster`, a head
with no GPU and two worker nodes of 2 logical GPUs each. Ray schedules on logical resources; the
cells find no CUDA device and train on CPU. Each attempt tags its MLflow run with its node and
GPU ids, so placement and overlaps are read back from the store.

The cluster's processes are this test's own (its temp dir, ports Ray picks), so other Ray users
on the machine are neither joined nor stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest

from pipeline import spec, track
from pipeline.__main__ import main
from pipeline.cluster import connect, simulate
from tests.helpers import TINY_SWEEP

pytestmark = pytest.mark.slow  # real Ray, DeepSpeed engines or processes

GPU_CELLS = (
    TINY_SWEEP.replace("  - name: none\n", "").replace("seeds: [1]", "seeds: [1, 2, 3, 4, 5]")
    .replace("max_steps: 6", "max_steps: 24").replace("limit: 16", "limit: 4")
    + "resources: {cpus: 1, gpus: 1}\ncheckpoint_every: 3\nmax_retries: 2\n"
)
TWO_GPU_CELL = TINY_SWEEP.replace("  - name: none\n", "").replace("max_steps: 6", "max_steps: 2").replace("limit: 16", "limit: 4") + (
    "resources: {cpus: 1, gpus: 1, processes: 2}\n"
)


def test_plan_packs_cells_onto_the_spec_cluster(write_spec, tracking_uri, capsys):
    """First in the module: once it has joined the live cluster, plan would use that one."""
    path = write_spec(GPU_CELLS + "cluster: {nodes: [{cpus: 8, gpus: 2, count: 2}, {cpus: 4}]}\n")
    assert main(["plan", str(path), "--tracking-uri", tracking_uri]) == 0
    assert "on the spec's cluster (3 nodes): 4 cells at once; estimated makespan ? s" in capsys.readouterr().out
    cells = spec.expand(spec.load(path))
    nodes = spec.load(path).cluster.totals()
    assert simulate([(c, 10.0) for c in cells], nodes, None) == (4, 20.0)
    assert simulate([(c, 10.0) for c in cells], nodes, 2) == (2, 30.0)
    two = [(c.model_copy(update={"resources": spec.Resources(gpus=1, processes=2)}), 10.0) for c in cells]
    assert simulate(two, nodes, None) == (2, 30.0)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    # Ray writes the cluster's address to RAY_TMPDIR, not to /tmp/ray where `auto` finds it
    with mock.patch.dict(os.environ, {"RAY_TMPDIR": str(temp)}):
        os.environ.pop("RAY_ADDRESS", None)
        (temp / "ray").mkdir()
        node = {"temp_dir": str(temp / "ray"), "include_dashboard": False}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 1, "num_gpus": 0})
        cluster.workers = [cluster.add_node(**node, num_cpus=4, num_gpus=2) for _ in range(2)]
        cluster.wait_for_nodes()
        try:
            yield cluster
        finally:
            import ray

            ray.shutdown()
            cluster.shutdown()


def _run(path: Path, cluster, uri: str, checkpoints: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline", "run", str(path), "--address", cluster.address, "--tracking-uri", uri,
               "--checkpoint-dir", str(checkpoints)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"TQDM_DISABLE": "1"})


def test_a_cell_no_node_can_hold_is_rejected_against_the_live_cluster(cluster, write_spec, tracking_uri, capsys):
    for resources, need in (("{gpus: 3}", "1 CPUs and 3 GPUs"), ("{gpus: 1, processes: 3}", "3 processes × 1 CPUs and 3 processes × 1 GPUs")):
        path = write_spec(TINY_SWEEP + f"resources: {resources}\n")
        assert main(["validate", str(path), "--address", cluster.address]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"resources: no node of the Ray cluster at {cluster.address} has {need}" in err
        assert "(largest: 4 CPUs, 2 GPUs)" in err
    main(["plan", str(write_spec(GPU_CELLS)), "--address", cluster.address, "--tracking-uri", tracking_uri])
    assert "(3 nodes): 4 cells at once" in capsys.readouterr().out


def test_a_two_gpu_cell_runs_both_ranks_on_one_node_with_both_gpus(cluster, write_spec, tracking_uri, tmp_path):
    sweep = _run(write_spec(TWO_GPU_CELL), cluster, tracking_uri, tmp_path / "ckpt")
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err[-3000:]
    [run] = track.cell_runs(tracking_uri, "tiny")
    assert run.data.tags["ray.node_id"] in {w.node_id for w in cluster.workers}
    ranks = [place.split(":") for place in run.data.tags["ray.rank_placement"].split()]
    assert len(ranks) == 2 and ranks[0][0] == ranks[1][0] == run.data.tags["ray.node_id"][:8]  # both ranks on rank 0's node
    assert sorted(gpus for _, gpus in ranks) == ["0", "1"]  # each with a GPU of its own


def test_one_gpu_cells_fill_every_gpu_and_fail_over_when_a_node_dies(cluster, write_spec, tracking_uri, tmp_path):
    path = write_spec(GPU_CELLS)
    sweep = _run(path, cluster, tracking_uri, tmp_path / "ckpt")
    try:
        victim, lost, most_gpus_busy = _wait_for_a_checkpointed_cell(cluster, tracking_uri, tmp_path / "ckpt", sweep)
        cluster.remove_node(victim)
        out, err = sweep.communicate(timeout=400)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, err[-3000:]

    runs = track.cell_runs(tracking_uri, "tiny", status=None)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["run_key"] for r in finished) == sorted(c.run_key for c in spec.expand(spec.load(path)))  # once each
    assert all(r.info.status == "FAILED" for r in runs if r not in finished)
    for key in lost:  # every cell the dead node held failed there and resumed elsewhere from its checkpoint
        [failed] = [r for r in runs if r.data.tags["run_key"] == key and r.data.tags["ray.node_id"] == victim.node_id]
        assert failed.info.status == "FAILED" and failed.data.tags["error"].startswith("worker died")
        [done] = [r for r in finished if r.data.tags["run_key"] == key]
        assert done.data.tags["ray.node_id"] != victim.node_id
    assert max(r.data.metrics["train/resumed_from_step"] for r in finished if r.data.tags["run_key"] in lost) > 0

    # Every GPU held at once, as Ray's own free-resource view saw it before the node died (the
    # MLflow spans below open only after each fresh worker's imports, so they need not overlap 4 deep).
    assert most_gpus_busy == 4
    spans = [(r.info.start_time, r.info.end_time, r.data.tags["ray.node_id"]) for r in runs]
    peak, per_node = _overlaps(spans)
    assert peak <= 4 and max(per_node.values()) <= 2  # never more cells than GPUs, overall or on a node


def _wait_for_a_checkpointed_cell(cluster, uri: str, checkpoints: Path, sweep: subprocess.Popen, timeout: float = 240):
    """(a worker node, the run_keys of its running cells, the most GPUs Ray saw taken at once)
    once one of the cells has checkpointed."""
    import ray

    connect(cluster.address)
    deadline, most_busy = time.time() + timeout, 0
    workers = {w.node_id: w for w in cluster.workers}
    while time.time() < deadline:
        assert sweep.poll() is None, sweep.communicate()[1][-3000:]
        most_busy = max(most_busy, round(ray.cluster_resources().get("GPU", 0) - ray.available_resources().get("GPU", 0)))
        running = track.cell_runs(uri, "tiny", status="RUNNING")
        for run in running:
            key, node = run.data.tags["run_key"], run.data.tags["ray.node_id"]
            if node in workers and (checkpoints / key / "latest").exists():
                return workers[node], {r.data.tags["run_key"] for r in running if r.data.tags["ray.node_id"] == node}, most_busy
        time.sleep(0.2)
    raise TimeoutError("no cell checkpointed on a worker node")


def _overlaps(spans: list[tuple[int, int, str]]) -> tuple[int, dict[str, int]]:
    """Most runs open at once, overall and per node."""
    events = sorted([(start, 1, node) for start, _, node in spans] + [(end, -1, node) for _, end, node in spans])
    now, peak, per_node, most = 0, 0, {}, {}
    for _, step, node in events:  # at equal times the end (-1) sorts first: a handover is no overlap
        now += step
        per_node[node] = per_node.get(node, 0) + step
        peak, most[node] = max(peak, now), max(most.get(node, 0), per_node[node])
    return peak, most

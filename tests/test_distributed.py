"""Multi-process cells: N DeepSpeed ranks as Ray actors in one placement group (gloo on CPU).

A 2-process cell sees, per step, exactly the micro-batches a 1-process cell with
`grad_accum: 2` sees, so their loss curves agree; killing one rank mid-training fails the
attempt, and the retry resumes both ranks from the shared checkpoint.
"""

from __future__ import annotations

import os
import signal

import pytest

from pipeline import track
from pipeline.schedule import rank_env
from tests.helpers import TINY_SWEEP, kill_group, ray_worker_pids, run_sweep, wait_for_checkpoint

pytestmark = pytest.mark.slow  # real Ray, DeepSpeed engines or processes

ONE_LORA = TINY_SWEEP.replace("  - name: none\n", "").replace("max_steps: 6", "max_steps: 30").replace("limit: 16", "limit: 8")
TWO_RANKS = ONE_LORA.replace("name: tiny", "name: ranks2") + "resources: {cpus: 1, processes: 2}\ncheckpoint_every: 5\nmax_retries: 1\n"
ONE_RANK = ONE_LORA.replace("name: tiny", "name: ranks1").replace("micro_batch_size: 4", "micro_batch_size: 4, grad_accum: 2")


def test_two_rank_cell_matches_one_process_and_resumes_after_a_rank_is_killed(write_spec, tracking_uri, tmp_path):
    two = run_sweep(write_spec(TWO_RANKS, "two.yaml"), tracking_uri, tmp_path / "ckpt")
    try:
        wait_for_checkpoint(tmp_path / "ckpt", two)
        ranks = ray_worker_pids(two, "_Rank")
        assert len(ranks) == 2
        os.kill(ranks[-1], signal.SIGKILL)
        out, err = two.communicate(timeout=300)
    finally:
        kill_group(two)
    assert two.returncode == 0, err[-3000:]
    one = run_sweep(write_spec(ONE_RANK, "one.yaml"), tracking_uri, tmp_path / "ckpt1")
    try:
        _, err = one.communicate(timeout=300)
    finally:
        kill_group(one)
    assert one.returncode == 0, err[-3000:]

    failed, resumed = sorted(track.cell_runs(tracking_uri, "ranks2", status=None), key=lambda r: r.info.start_time)
    assert (failed.info.status, resumed.info.status) == ("FAILED", "FINISHED")
    assert failed.data.tags["error"].startswith("worker died")
    assert resumed.data.metrics["train/resumed_from_step"] >= 5
    [single] = track.cell_runs(tracking_uri, "ranks1")
    curve2 = [v for _, v in track.metric_history(tracking_uri, resumed.info.run_id, "train/loss")]
    curve1 = [v for _, v in track.metric_history(tracking_uri, single.info.run_id, "train/loss")]
    assert len(curve2) == len(curve1) == 30
    assert curve2 == pytest.approx(curve1, rel=1e-4)
    assert resumed.data.metrics["train/tokens_per_s"] > 0
    assert resumed.data.metrics["arc_easy/acc"] == pytest.approx(single.data.metrics["arc_easy/acc"], abs=1e-9)


def test_rank_env_puts_the_rendezvous_on_rank_0_and_each_rank_on_its_own_gpu():
    places = [("10.0.0.1", ["3"], 29500), ("10.0.0.1", ["5"], 29501), ("10.0.0.2", ["0"], 29502)]
    envs = rank_env(places)
    assert [e["RANK"] for e in envs] == ["0", "1", "2"] and {e["WORLD_SIZE"] for e in envs} == {"3"}
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {("10.0.0.1", "29500")}
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "0", "0"] and all("CUDA_VISIBLE_DEVICES" not in e for e in envs)  # Ray's own GPU each
    cpu = rank_env([("10.0.0.1", [], 1234), ("10.0.0.1", [], 1235)])
    assert [e["LOCAL_RANK"] for e in cpu] == ["0", "1"] and all("CUDA_VISIBLE_DEVICES" not in e for e in cpu)

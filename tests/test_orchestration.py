"""Faults and resumption with real processes: a cell killed mid-training resumes from its
checkpoint and ends exactly as an uninterrupted run; a sweep retries a cell whose worker was
killed; a sweep whose driver was killed finishes every cell exactly once on rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from jobs import families
from pipeline import spec, track
from tests.helpers import TINY_SWEEP, kill_group, ray_worker_pids, run_sweep, wait_for_checkpoint

pytestmark = pytest.mark.slow  # real Ray, DeepSpeed engines or processes

# One LoRA cell, long enough (40 steps, a checkpoint every 5) to be killed in the middle.
LONG = TINY_SWEEP.replace("  - name: none\n", "").replace("max_steps: 6", "max_steps: 40").replace("limit: 16", "limit: 8") + "checkpoint_every: 5\n"


def _history(uri: str, run) -> list[float]:
    return [v for _, v in track.metric_history(uri, run.info.run_id, "train/loss")]


def test_a_local_rays_workers_get_the_data_dir_and_no_bars_while_the_driver_keeps_its_own(local_ray):
    import ray

    driver = os.environ.get("TQDM_DISABLE")
    worker = ray.get(ray.remote(lambda: {k: os.environ.get(k) for k in ("TQDM_DISABLE", "PEFTBENCH_DATA")}).remote())
    assert worker == {"TQDM_DISABLE": "1", "PEFTBENCH_DATA": str(families.data_dir())}
    assert os.environ.get("TQDM_DISABLE") == driver  # set only while Ray started


def test_killed_cell_resumes_and_ends_as_an_uninterrupted_run(write_spec, tracking_uri, tmp_path):
    [cell] = spec.expand(spec.load(write_spec(LONG)))
    cell_json = tmp_path / "cell.json"
    cell_json.write_text(cell.model_dump_json())
    command = [sys.executable, "-m", "jobs.train", str(cell_json), "--tracking-uri", tracking_uri]

    killed = subprocess.Popen(command + ["--checkpoint-dir", str(tmp_path / "ckpt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step = wait_for_checkpoint(tmp_path / "ckpt", killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL and 0 < step < 40
    resumed = subprocess.run(command + ["--checkpoint-dir", str(tmp_path / "ckpt")], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (tmp_path / "ckpt" / cell.run_key).exists()  # removed once the cell finished
    whole = subprocess.run(command + ["--checkpoint-dir", str(tmp_path / "fresh")], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]

    runs = track.cell_runs(tracking_uri, "tiny", status=None)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "RUNNING"]  # the killed one never closed
    first_resumed, uninterrupted = sorted((r for r in runs if r.info.status == "FINISHED"), key=lambda r: r.info.start_time)
    assert first_resumed.data.metrics["train/resumed_from_step"] >= step > 0
    assert uninterrupted.data.metrics["train/resumed_from_step"] == 0
    assert _history(tracking_uri, first_resumed) == pytest.approx(_history(tracking_uri, uninterrupted), rel=1e-5)
    assert len(_history(tracking_uri, first_resumed)) == 40
    for metric in ("train/final_loss", "arc_easy/acc", "avg/acc"):
        assert first_resumed.data.metrics[metric] == pytest.approx(uninterrupted.data.metrics[metric], rel=1e-5), metric


def test_killed_worker_is_recorded_failed_and_retried_from_its_checkpoint(write_spec, tracking_uri, tmp_path):
    path = write_spec(LONG + "max_retries: 1\n")
    sweep = run_sweep(path, tracking_uri, tmp_path / "ckpt")
    try:
        wait_for_checkpoint(tmp_path / "ckpt", sweep)
        [worker] = ray_worker_pids(sweep)
        os.kill(worker, signal.SIGKILL)
        out, err = sweep.communicate(timeout=300)
    finally:
        kill_group(sweep)
    assert sweep.returncode == 0, err[-3000:]
    assert "| lora" in out
    runs = track.cell_runs(tracking_uri, "tiny", status=None)
    failed, finished = sorted(runs, key=lambda r: r.info.start_time)
    assert (failed.info.status, finished.info.status) == ("FAILED", "FINISHED")
    assert failed.data.tags["error"].startswith("worker died")
    assert finished.data.metrics["train/resumed_from_step"] > 0
    assert len(track.metric_history(tracking_uri, finished.info.run_id, "train/loss")) == 40


def test_killed_driver_then_rerun_finishes_every_cell_once_beside_a_concurrent_sweep(write_spec, tracking_uri, tmp_path, capfd):
    """Two sweeps share one SQLite store at once; one driver is SIGKILLed mid-training and rerun."""
    import sqlite3

    import psutil

    from pipeline.__main__ import main

    killed_spec = write_spec(LONG.replace("methods:\n", "methods:\n  - name: none\n"), "killed.yaml")
    other_spec = write_spec(TINY_SWEEP.replace("name: tiny", "name: other").replace("limit: 16", "limit: 8"), "other.yaml")
    killed, other = run_sweep(killed_spec, tracking_uri, tmp_path / "ckpt"), run_sweep(other_spec, tracking_uri, tmp_path / "ckpt")
    try:
        wait_for_checkpoint(tmp_path / "ckpt", killed)
        ray_processes = psutil.Process(killed.pid).children(recursive=True)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait() == -signal.SIGKILL
        psutil.wait_procs(ray_processes, timeout=30)  # Ray's processes share their driver's fate
        out, err = other.communicate(timeout=300)
        assert other.returncode == 0, err[-3000:]
    finally:
        kill_group(killed)
        kill_group(other)

    rerun = run_sweep(killed_spec, tracking_uri, tmp_path / "ckpt")
    out, err = rerun.communicate(timeout=300)
    kill_group(rerun)
    assert rerun.returncode == 0, err[-3000:]
    assert "| none" in out and "| lora" in out

    cells = spec.expand(spec.load(killed_spec))
    runs = track.cell_runs(tracking_uri, "tiny", status=None)
    finished = [r.data.tags["run_key"] for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(c.run_key for c in cells)  # each cell FINISHED exactly once
    lora = next(r for r in runs if r.info.status == "FINISHED" and r.data.tags["method"] == "lora")
    assert lora.data.metrics["train/resumed_from_step"] > 0
    assert all(r.info.status == "FINISHED" for r in track.cell_runs(tracking_uri, "other", status=None))
    assert len(track.cell_runs(tracking_uri, "other", status=None)) == 2
    with sqlite3.connect(tracking_uri.removeprefix("sqlite:///")) as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)

    capfd.readouterr()
    assert main(["status", "tiny", "--tracking-uri", tracking_uri]) == 0
    assert "2 cells: 2 done, 0 running, 0 failed, 0 remaining" in capfd.readouterr().out
    assert main(["plan", str(killed_spec), "--tracking-uri", tracking_uri]) == 0
    plan = capfd.readouterr().out
    assert "2 cells, 2 already finished" in plan and all(c.run_key in plan for c in cells)

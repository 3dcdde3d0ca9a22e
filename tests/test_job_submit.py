"""`ray job submit --working-dir . -- python -m pipeline run SPEC` against a cluster started
with `ray start --head`, exactly as a user drives a remote cluster; the cluster is stopped after.

`ray stop --force` would kill every Ray process of this user on the machine, other sessions'
included, so the test stops its own cluster: the processes whose command line names its temp
dir, and their children (the workers), by pid."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipeline import spec, track
from pipeline.schedule import free_port
from tests.helpers import TINY_SWEEP

pytestmark = pytest.mark.slow  # real Ray, DeepSpeed engines or processes

ROOT = Path(__file__).resolve().parents[1]


def test_ray_job_submit_runs_a_sweep_on_a_started_cluster(write_spec, tmp_path, data_dir):
    path = write_spec(TINY_SWEEP.replace("limit: 16", "limit: 8"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ray = str(Path(sys.executable).parent / "ray")
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    # The venv's bin first on PATH, as after `source .venv/bin/activate`: the job's `python` is the venv's.
    # Ray >= 2.60 turns token auth on for `ray start` when ~/.ray/auth_token exists, but not for
    # the `ray job submit` client: name the mode and a token of this test's own for both.
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_TMPDIR": str(temp),
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
    }
    # Free ports for every fixed default (8265, 52365, ...): another Ray on this machine may hold them.
    port, dashboard, agent, agent_grpc, runtime_env, metrics, client = (free_port("127.0.0.1") for _ in range(7))
    start = [ray, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
             "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp}"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        command = [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
                   "--runtime-env-json", f'{{"env_vars": {{"MLFLOW_TRACKING_URI": "{uri}", "PEFTBENCH_DATA": "{data_dir}"}}}}',
                   "--", "python", "-m", "pipeline", "run", str(path)]
        deadline = time.time() + 60
        while True:  # `ray start` returns before the head's job agent is up; until then submit is refused
            submit = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in submit.stderr or time.time() > deadline:
                break
            time.sleep(3)
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-3000:]
    assert "succeeded" in submit.stdout and "| lora" in submit.stdout
    # Quiet by default: the libraries' chatter (DeepSpeed, transformers, git via lm-eval, MLflow) stays off the terminal.
    for noise in ("Setting accelerator to CPU", "FutureWarning", "built successfully", "fatal: not a git", "INFO mlflow"):
        assert noise not in submit.stdout + submit.stderr, noise
    runs = track.cell_runs(uri, "tiny")
    assert sorted(r.data.tags["run_key"] for r in runs) == sorted(c.run_key for c in spec.expand(spec.load(path)))


def _stop_cluster(temp_dir: Path) -> None:
    """SIGKILL the cluster started with `--temp-dir=temp_dir`, as `ray stop --force` would."""
    heads = [p for p in psutil.process_iter(["cmdline"]) if str(temp_dir) in " ".join(p.info["cmdline"] or [])]
    processes = {p.pid: p for head in heads for p in [head, *_children(head)]}
    for process in processes.values():
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(processes.values()), timeout=30)


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []

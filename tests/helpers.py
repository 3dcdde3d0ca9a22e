"""What several test modules share: the tiny sweep, a local Ray, hand-built results frames, and
the helpers that drive `pipeline run` in real processes. Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.published import EFFICIENCY_COLUMNS, RESULT_COLUMNS

TINY_SWEEP = """
name: tiny
backbones: [tiny-llama]
methods:
  - name: none
  - name: lora
    hparams: {r: 4}
tasks: [arc_easy]
regimes:
  - name: cs-32
    tasks: [arc_easy, openbookqa]
    n_examples: 32
seeds: [1]
train: {lr: 1.0e-3, micro_batch_size: 4, max_steps: 6, max_seq_len: 128}
eval: {limit: 16, batch_size: 8}
"""


@contextlib.contextmanager
def local_ray_instance():
    """A real local Ray instance, started as `pipeline run` starts one, shut down afterwards."""
    import ray

    from pipeline import cluster

    cluster.connect("local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def wait_for_checkpoint(directory: Path, proc: subprocess.Popen, timeout: float = 180) -> int:
    """Block until `directory` holds a whole checkpoint (its manifest written: jobs.train); return its step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        manifest = next(directory.glob("*/step*/sha256.json"), None)
        if manifest is not None:
            return int(manifest.parent.name.removeprefix("step"))
        assert proc.poll() is None, f"process ended (rc {proc.returncode}) before writing a checkpoint"
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint in {directory} after {timeout} s")


def run_sweep(path: Path, uri: str, checkpoints: Path) -> subprocess.Popen:
    """`python -m pipeline run` in its own process group (its local Ray with it), 2 CPUs."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "pipeline", "run", str(path), "--tracking-uri", uri, "--checkpoint-dir", str(checkpoints)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def ray_worker_pids(proc: subprocess.Popen, task: str = "run_cell") -> list[int]:
    """Ray worker processes running `task` (a cell, or `_Rank` actors), among the sweep's descendants."""
    import psutil

    workers = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith(f"ray::{task}"):
                workers.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return workers


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def sweep_frames(
    accuracy: dict[str, float],
    tasks=("arc_easy", "piqa", "boolq", "openbookqa"),
    seeds=(42, 123, 456),
    n_items: int = 400,
    backbone: str = "smollm2-135m",
    regime: str = "cs-1k",
    same_as: dict[str, str] | None = None,
    efficiency: dict[str, tuple[float, float, float]] | None = None,
    rng_seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, items). `same_as={"lora_copy": "lora"}` copies lora's runs under a new name.

    Item difficulty is shared across methods (as on a real test set), so paired tests have
    the correlation they would have on real runs.
    """
    rng = np.random.default_rng(rng_seed)
    same_as = same_as or {}
    efficiency = efficiency or {}
    results, items = [], []
    for task in tasks:
        difficulty = rng.normal(0, 1.5, n_items)
        for seed in seeds:
            noise = rng.normal(0, 0.5, n_items)
            drawn = {}
            for method, acc in accuracy.items():
                logit = np.log(acc / (1 - acc)) - difficulty + noise + rng.normal(0, 0.7, n_items)
                drawn[method] = (rng.random(n_items) < 1 / (1 + np.exp(-logit))).astype(int)
            for copy, original in same_as.items():
                drawn[copy] = drawn[original]
            for method, correct in drawn.items():
                run_key = f"{method}-{backbone}-{regime}-{seed}"
                params, tok_s, mem = efficiency.get(method, (np.nan, np.nan, np.nan))
                results.append(
                    dict(
                        run_key=run_key, sweep="synthetic", method=method, backbone=backbone, regime=regime,
                        seed=seed, task=task, metric="acc", value=correct.mean(), trainable_params=params,
                        trainable_pct=params / 135e6 * 100, tokens_per_s=tok_s, peak_mem_mb=mem,
                    )
                )
                items.append(
                    pd.DataFrame(
                        dict(run_key=run_key, method=method, backbone=backbone, regime=regime, seed=seed,
                             task=task, doc_id=np.arange(n_items), acc=correct)
                    )
                )
    return pd.DataFrame(results, columns=RESULT_COLUMNS + EFFICIENCY_COLUMNS), pd.concat(items, ignore_index=True)

"""Shared fixtures: a throwaway MLflow store per test, the shared benchmark data, tiny sweeps."""

from __future__ import annotations

import contextlib
import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@contextlib.contextmanager
def local_ray_instance():
    """A real local Ray instance, started as `pipeline run` starts one, shut down afterwards."""
    import ray

    from pipeline import schedule

    schedule.connect("local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def local_ray():
    """A real local Ray instance for one test."""
    with local_ray_instance():
        yield


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from jobs import tasks

    path = tasks.data_dir()
    assert path is not None, "tests need the benchmark data: set PEFTBENCH_DATA or put shared/ beside the repo"
    return path


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a sweep file from YAML text and return its path."""

    def write(text: str, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


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

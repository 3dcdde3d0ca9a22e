"""Shared fixtures: a throwaway MLflow store per test, the shared benchmark data, tiny sweeps."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.helpers import local_ray_instance

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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
    from jobs import families

    path = families.data_dir()
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


@pytest.fixture
def eager_kernels(monkeypatch):
    """Eager sinc kernels: compiling them costs more than these small shapes ever run."""
    from adapters import elementwise

    monkeypatch.setattr(elementwise, "COMPILE", False)


@pytest.fixture(scope="module")
def one_thread():
    """The CI machine's 2 cores are shared; one intra-op thread avoids OpenMP oversubscription."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Where a cell's numbers come from, as tags of its run: the code, the libraries, the hardware, the data.

The code's commit is the driver's to take (a `ray job submit` upload has no `.git`): it is a
tag of the sweep's parent run, which `tracking.cell_run` copies into each cell run. The rest
is read where the cell runs. Data are fingerprinted, not stored: the sha256 of the training
sample and of the scored items, each also an MLflow dataset input of the run (name, digest,
schema, row count), so two runs that claim the same data can be checked to have had it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

CODE_TAGS = ("git.commit", "git.dirty")
LIBRARIES = ("torch", "transformers", "peft", "deepspeed", "lm_eval", "mlflow", "ray")  # distribution names
VERSION_TAGS = tuple(f"version.{name}" for name in LIBRARIES)
HARDWARE_TAGS = ("hw.cpu", "hw.cpu_count", "hw.gpu", "hw.gpu_count", "hw.gpu_driver")
DATA_TAGS = ("data.train_sha256", "data.eval_sha256")
TAGS = CODE_TAGS + VERSION_TAGS + HARDWARE_TAGS + DATA_TAGS
COMMIT_ENV = "PEFTBENCH_GIT_COMMIT"
# What each data tag's rows were used for, in MLflow's words (the dataset input's context).
CONTEXTS = {"train": "training", "eval": "evaluation"}


def code_tags(parent_tags: dict[str, str] | None) -> dict[str, str]:
    """The driver's commit tags as its parent run holds them; a cell run without one
    (`python -m jobs.train`) has $PEFTBENCH_GIT_COMMIT, else "unknown"."""
    found = {k: v for k, v in (parent_tags or {}).items() if k in CODE_TAGS}
    return found or {"git.commit": os.environ.get(COMMIT_ENV, "").strip() or "unknown", "git.dirty": "unknown"}


def environment() -> dict[str, str]:
    """Library versions and hardware of the process the cell runs in."""
    return {**versions(), **hardware()}


@functools.cache
def versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[f"version.{name}"] = "absent"
    return found


def hardware() -> dict[str, str]:
    """CPU model and cores, and the GPUs this process may use (as torch sees them) with the driver."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = sorted({torch.cuda.get_device_name(i) for i in range(count)})
    return {
        "hw.cpu": _cpu_model(),
        "hw.cpu_count": str(os.cpu_count() or 0),
        "hw.gpu": ", ".join(gpus) or "none",
        "hw.gpu_count": str(count),
        "hw.gpu_driver": _gpu_driver(),
    }


@functools.cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def _gpu_driver() -> str:
    """The NVIDIA driver version from nvidia-smi; "none" without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return "none"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return ", ".join(sorted({line.strip() for line in out.splitlines() if line.strip()})) or "unknown"


def sha256(rows: list[dict]) -> str:
    """sha256 of rows as canonical JSON lines, in order: the same data in the same order hash alike anywhere."""
    text = "\n".join(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str) for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def log_data(run, kind: str, name: str, rows: list[dict], source: str) -> str:
    """Tag `data.<kind>_sha256` (kind: train or eval) of `rows` and log them as an MLflow
    dataset input of `run` with that digest; return the sha256."""
    digest = sha256(rows)
    run.set_tag(f"data.{kind}_sha256", digest)
    run.log_input(rows, name, CONTEXTS[kind], digest, source)
    return digest

"""Provenance on the driver's side: the code's commit when a sweep starts, and the report's footer.

A cell cannot see the commit it runs (a `ray job submit` upload has no `.git`), so the driver
takes it and puts it on the sweep's parent run; each cell run copies it and records its own
libraries, hardware and data (`jobs.provenance`). The footer says what the runs behind a report
ran on, and warns where one table's rows did not run on the same code, libraries or hardware:
its differences could then come from those instead of the methods.
"""

from __future__ import annotations

import html
import os
import subprocess
from pathlib import Path

import pandas as pd

from jobs.provenance import CODE_TAGS, COMMIT_ENV, HARDWARE_TAGS, LIBRARIES, TAGS, VERSION_TAGS

__all__ = ["TAGS", "code_version", "footer", "render"]
REPO_ROOT = Path(__file__).resolve().parents[1]
BLOCK = ["backbone", "regime"]
NONE_RECORDED = "Provenance: none recorded (results from a CSV or a paper, not runs of this store): no commit, library versions or hardware to state."


def code_version(root: Path = REPO_ROOT) -> dict[str, str]:
    """The parent run's `git.commit` and `git.dirty`: from git when `root` is a checkout's top,
    else $PEFTBENCH_GIT_COMMIT (dirty unknown), else "unknown"."""
    try:
        top, commit = _git(root, "rev-parse", "--show-toplevel", "HEAD").splitlines()
        if Path(top).resolve() == root.resolve():
            return {"git.commit": commit, "git.dirty": "true" if _git(root, "status", "--porcelain").strip() else "false"}
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return {"git.commit": os.environ.get(COMMIT_ENV, "").strip() or "unknown", "git.dirty": "unknown"}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60, check=True).stdout


def footer(results: pd.DataFrame) -> list[str]:
    """Lines stating the code, libraries, hardware and data of the runs in `results`, and a
    WARNING per table (backbone × regime) whose runs mix commits, dirty and clean trees,
    library versions or hardware. One line when the frame carries no provenance."""
    if "git.commit" not in results or results["git.commit"].isna().all():
        return [NONE_RECORDED]
    runs = results.drop_duplicates("run_key").copy()
    for tag in CODE_TAGS + VERSION_TAGS + HARDWARE_TAGS:  # a saved CSV may lack some
        runs[tag] = runs[tag].fillna("unknown").astype(str) if tag in runs else "unknown"
    runs["git.dirty"] = runs["git.dirty"].str.lower()  # a CSV reads "true" back as True
    runs["code"] = runs.apply(_code, axis=1)
    runs["hardware"] = runs.apply(_hardware, axis=1)
    lines = [
        "Code: " + _counted(runs["code"]),
        "Libraries: " + ", ".join(f"{name} {' / '.join(sorted(runs[tag].unique()))}" for name, tag in zip(LIBRARIES, VERSION_TAGS)),
        "Hardware: " + _counted(runs["hardware"]),
    ]
    for (backbone, regime), block in runs.groupby(BLOCK, sort=False):
        name = f"{backbone} · {regime}"
        data = [f"{what} sha256 {', '.join(sorted(h[:12] for h in block[tag].dropna().unique()))}"
                for what, tag in (("training sample", "data.train_sha256"), ("evaluation items", "data.eval_sha256")) if tag in block and block[tag].notna().any()]
        if data:
            lines.append(f"Data, {name}: " + "; ".join(data))
        mixed = _mixed(block)
        if mixed:
            lines.append(f"WARNING: {name} mixes {'; '.join(mixed)}: its differences may come from these, not from the methods.")
    return lines


def _code(run: pd.Series) -> str:
    commit = "commit unknown" if run["git.commit"] == "unknown" else f"commit {run['git.commit'][:12]}"
    return commit + {"true": " (dirty: uncommitted changes, not recorded)", "false": " (clean)"}.get(run["git.dirty"], " (dirty or clean: unknown)")


def _hardware(run: pd.Series) -> str:
    gpu = "no GPU" if run["hw.gpu_count"] == "0" else f"{run['hw.gpu_count']} × {run['hw.gpu']} (driver {run['hw.gpu_driver']})"
    return f"{run['hw.cpu']} ({run['hw.cpu_count']} cores), {gpu}"


def _counted(values: pd.Series) -> str:
    """One value as it is; several with how many runs had each."""
    counts = values.value_counts()
    return counts.index[0] if len(counts) == 1 else "; ".join(f"{v} ({n} of {len(values)} runs)" for v, n in counts.items())


def _mixed(block: pd.DataFrame) -> list[str]:
    """What the block's runs do not share."""
    mixed = []
    if block["git.commit"].nunique() > 1:
        mixed.append("commits " + ", ".join(sorted(c[:12] for c in block["git.commit"].unique())))
    if block["git.dirty"].nunique() > 1:
        mixed.append("dirty and clean trees")
    versions = [f"{name} {' / '.join(sorted(block[tag].unique()))}" for name, tag in zip(LIBRARIES, VERSION_TAGS) if block[tag].nunique() > 1]
    if versions:
        mixed.append("library versions (" + ", ".join(versions) + ")")
    if block["hardware"].nunique() > 1:
        mixed.append("hardware")
    return mixed


def render(lines: list[str], fmt: str) -> str:
    """The footer as a section of a md or html report; in tex, comments like the legend's."""
    if fmt == "md":
        return "## Provenance\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    if fmt == "html":
        return "<h2>Provenance</h2>\n<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>\n"
    if fmt == "tex":
        return "% Provenance\n" + "\n".join(f"% {line}" for line in lines) + "\n"
    raise ValueError(f"no provenance footer for format {fmt!r}")

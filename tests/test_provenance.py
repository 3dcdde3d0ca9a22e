"""Provenance: the driver's commit, what a cell run records, and the report's footer."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from jobs import provenance as cell_provenance
from jobs import tracking
from jobs.contract import Cell
from pipeline import provenance, spec, track
from tests.helpers import TINY_SWEEP

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def _runs(*commits: str, dirty: str = "false", torch: str = "2.13.0") -> pd.DataFrame:
    """One row per run of one table (tiny-llama · cs-32), each on `commits[i]`."""
    rows = []
    for i, commit in enumerate(commits):
        tags = {tag: "x" for tag in cell_provenance.TAGS} | {"git.commit": commit, "git.dirty": dirty, "version.torch": torch, "hw.cpu": "Some CPU",
                                                            "hw.cpu_count": "2", "hw.gpu_count": "0", "data.train_sha256": "ab" * 32}
        rows.append({"run_key": f"k{i}", "method": f"m{i}", "backbone": "tiny-llama", "regime": "cs-32", "seed": 1, "task": "arc_easy", "value": 0.5, **tags})
    return pd.DataFrame(rows)


def test_footer_of_one_commit_states_it_with_versions_hardware_and_data():
    lines = provenance.footer(_runs(COMMIT, COMMIT))
    text = "\n".join(lines)
    assert lines[0] == "Code: commit 0123456789ab (clean)"
    assert "torch 2.13.0" in lines[1] and "lm_eval x" in lines[1]
    assert lines[2] == "Hardware: Some CPU (2 cores), no GPU"
    assert "training sample sha256 abababababab" in text and "WARNING" not in text


def test_footer_warns_when_one_table_mixes_commits_trees_or_versions():
    mixed = pd.concat([_runs(COMMIT), _runs(OTHER, dirty="true", torch="2.14.0").assign(run_key="k9")])
    warning = provenance.footer(mixed)[-1]
    assert warning.startswith("WARNING: tiny-llama · cs-32 mixes commits 0123456789ab, fedcba987654")
    assert "dirty and clean trees" in warning and "torch 2.13.0 / 2.14.0" in warning
    assert provenance.footer(mixed)[0] == "Code: commit 0123456789ab (clean) (1 of 2 runs); commit fedcba987654 (dirty: uncommitted changes, not recorded) (1 of 2 runs)"


def test_footer_without_provenance_columns_says_so_in_one_line():
    published = pd.DataFrame({"method": ["lora"], "backbone": ["b"], "regime": ["r"], "task": ["arc_easy"], "value": [0.5]})
    assert provenance.footer(published) == [provenance.NONE_RECORDED]
    assert provenance.footer(_runs(COMMIT).assign(**{"git.commit": None})) == [provenance.NONE_RECORDED]
    for fmt in ("md", "html", "tex"):
        assert "none recorded" in provenance.render([provenance.NONE_RECORDED], fmt)


def test_driver_commit_from_git_else_env_else_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv(cell_provenance.COMMIT_ENV, raising=False)
    here = provenance.code_version()
    assert re.fullmatch(r"[0-9a-f]{40}", here["git.commit"]) and here["git.dirty"] in ("true", "false")
    assert provenance.code_version(tmp_path) == {"git.commit": "unknown", "git.dirty": "unknown"}
    monkeypatch.setenv(cell_provenance.COMMIT_ENV, COMMIT)
    assert provenance.code_version(tmp_path) == {"git.commit": COMMIT, "git.dirty": "unknown"}


def test_a_cell_run_copies_the_parent_commit_and_logs_a_dataset_input(write_spec, tracking_uri):
    cell: Cell = spec.expand(spec.load(write_spec(TINY_SWEEP)))[1]
    parent = track.start_sweep_run(tracking_uri, "tiny", TINY_SWEEP, [], {"git.commit": COMMIT, "git.dirty": "false"})
    rows = [{"context": "Question: 2+2?\nAnswer:", "continuation": " 4"}]
    with tracking.cell_run(tracking_uri, cell, parent, cell_provenance.versions()) as run:
        digest = cell_provenance.log_data(run, "train", "cs-32/train", rows, str(Path.cwd()))
    logged = tracking.client(tracking_uri).get_run(run.run_id)
    assert logged.data.tags["git.commit"] == COMMIT and logged.data.tags["data.train_sha256"] == digest == cell_provenance.sha256(list(rows))
    assert logged.data.tags["version.mlflow"] == cell_provenance.versions()["version.mlflow"]
    (dataset,) = logged.inputs.dataset_inputs
    assert dataset.dataset.name == "cs-32/train" and dataset.dataset.digest == digest[:36]
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"


def test_the_training_sample_hash_follows_the_sample_not_the_run(data_dir):
    from jobs import families
    from jobs.contract import Regime

    for tasks in (["arc_easy", "openbookqa"], ["mrpc"]):
        family = families.of(tasks[0])
        first, again, other = (cell_provenance.sha256(family.example_rows(family.training_examples(Regime(name="r", tasks=tasks, n_examples=8, sample_seed=seed), data_dir)))
                               for seed in (0, 0, 1))
        assert first == again != other  # the same draw hashes alike; another seed's draw does not

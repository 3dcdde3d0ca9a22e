"""The driver's side of MLflow: the sweep's parent run, and every read the comparison makes.

The store's layout and the cells' own runs are `jobs.tracking`'s (the worker writes them);
this module reads them back by run_key and writes what only the driver knows.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus

from jobs.tracking import KIND, client, experiment_id, tracking_uri

__all__ = ["KIND", "experiment_id", "tracking_uri"]  # re-exported: the driver's one MLflow module


def start_sweep_run(uri: str, sweep_name: str, spec_text: str, cells: list[dict], tags: dict[str, str] | None = None) -> str:
    """A parent run for this invocation of the sweep, with the spec file and its cells
    (`cells.json`, what `status` counts against) as artifacts."""
    store = client(uri)
    run = store.create_run(experiment_id(uri, sweep_name), run_name=sweep_name, tags={KIND: "sweep", "sweep": sweep_name, **(tags or {})})
    store.log_text(run.info.run_id, spec_text, "sweep.yaml")
    store.log_text(run.info.run_id, json.dumps(cells, indent=1), "cells.json")
    return run.info.run_id


def sweep_cells(uri: str, sweep_name: str) -> list[dict] | None:
    """The cells of the sweep's newest invocation (None if it never ran)."""
    run = latest_sweep_run(uri, sweep_name)
    text = read_artifact_text(uri, run.info.run_id, "cells.json") if run else None
    return json.loads(text) if text else None


def end_run(uri: str, run_id: str, ok: bool) -> None:
    client(uri).set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


def log_text(uri: str, run_id: str, text: str, path: str) -> None:
    client(uri).log_text(run_id, text, path)


def cell_runs(uri: str, sweep_name: str, status: str | None = "FINISHED", parent: str | None = None) -> list[mlflow.entities.Run]:
    """Child runs of every invocation of the sweep, or of one (`parent`), newest first,
    optionally of one status."""
    store = client(uri)
    experiment = store.get_experiment_by_name(sweep_name)
    if experiment is None:
        return []
    query = f"tags.`{KIND}` = 'cell'" + (f" and attributes.status = '{status}'" if status else "")
    query += f" and tags.`mlflow.parentRunId` = '{parent}'" if parent else ""
    return store.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50000)


def finished_run_keys(uri: str, sweep_name: str) -> set[str]:
    return {run.data.tags["run_key"] for run in cell_runs(uri, sweep_name)}


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of a stepped metric, in step order."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def read_artifact_text(uri: str, run_id: str, path: str) -> str | None:
    """The text of a run's artifact, or None if the run has none at `path`."""
    store = client(uri)
    folder = path.rpartition("/")[0] or None
    if path not in {a.path for a in store.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(store.download_artifacts(run_id, path, tmp)).read_text()


def list_artifacts(uri: str, run_id: str, folder: str | None = None) -> list[str]:
    return [a.path for a in client(uri).list_artifacts(run_id, folder)]


def latest_sweep_run(uri: str, sweep_name: str) -> mlflow.entities.Run | None:
    """The newest parent run of the sweep (one per `pipeline run` invocation)."""
    store = client(uri)
    experiment = store.get_experiment_by_name(sweep_name)
    if experiment is None:
        return None
    runs = store.search_runs([experiment.experiment_id], f"tags.`{KIND}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def nightly_runs(uri: str, sweep_name: str) -> list[mlflow.entities.Run]:
    """The sweep's parent runs made by `pipeline nightly` (tag `nightly`), newest first."""
    store = client(uri)
    experiment = store.get_experiment_by_name(sweep_name)
    if experiment is None:
        return []
    query = f"tags.`{KIND}` = 'sweep' and tags.nightly LIKE '%'"
    return store.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50000)


def get_run(uri: str, run_id: str) -> mlflow.entities.Run | None:
    """The run with this id, or None when the store has none."""
    try:
        return client(uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def fail_running(uri: str, cell, parent_run_id: str | None, reason: str) -> None:
    """Close the cell's RUNNING run(s) under this sweep invocation as FAILED with `reason`:
    its job died without closing them (a killed worker)."""
    store = client(uri)
    query = f"tags.run_key = '{cell.run_key}' and attributes.status = 'RUNNING'"
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    for run in store.search_runs([experiment_id(uri, cell.sweep)], query):
        store.set_tag(run.info.run_id, "error", reason[:5000])
        store.set_terminated(run.info.run_id, "FAILED")


def set_tag(uri: str, run_id: str, key: str, value: str) -> None:
    client(uri).set_tag(run_id, key, value)

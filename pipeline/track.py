"""The one place that talks to MLflow.

Layout in the store: one experiment per sweep name; one parent run per `pipeline run`
invocation (tag `peftbench.kind=sweep`); one child run per cell (tag `peftbench.kind=cell`,
`run_key`, `mlflow.parentRunId`) holding the resolved cell as params, the metrics and the
artifacts. Jobs write their own child run; the driver reads them back by run_key.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

KIND = "peftbench.kind"
# The reports read one small artifact per cell: MLflow's bar for each would be a line per cell in a log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _client(uri: str) -> MlflowClient:
    """A client for the store. A new SQLite file is created under a file lock: two sweeps
    creating the same store at once otherwise race through MLflow's schema migrations."""
    if uri.startswith("sqlite:///") and uri not in _READY:
        with FileLock(uri.removeprefix("sqlite:///") + ".lock"):
            MlflowClient(uri).search_experiments(max_results=1)  # creates or checks the schema
        _READY.add(uri)
    return MlflowClient(uri)


_READY: set[str] = set()  # stores this process has already seen initialised


def tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite file `mlflow.db` in the working dir."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def experiment_id(uri: str, sweep_name: str) -> str:
    """The sweep's experiment, created on first use (artifacts beside a SQLite store's file)."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(sweep_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(sweep_name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # another writer created it first
        return client.get_experiment_by_name(sweep_name).experiment_id


def start_sweep_run(uri: str, sweep_name: str, spec_text: str, cells: list[dict], tags: dict[str, str] | None = None) -> str:
    """A parent run for this invocation of the sweep, with the spec file and its cells
    (`cells.json`, what `status` counts against) as artifacts."""
    client = _client(uri)
    run = client.create_run(experiment_id(uri, sweep_name), run_name=sweep_name, tags={KIND: "sweep", "sweep": sweep_name, **(tags or {})})
    client.log_text(run.info.run_id, spec_text, "sweep.yaml")
    client.log_text(run.info.run_id, json.dumps(cells, indent=1), "cells.json")
    return run.info.run_id


def sweep_cells(uri: str, sweep_name: str) -> list[dict] | None:
    """The cells of the sweep's newest invocation (None if it never ran)."""
    run = latest_sweep_run(uri, sweep_name)
    text = read_artifact_text(uri, run.info.run_id, "cells.json") if run else None
    return json.loads(text) if text else None


def end_run(uri: str, run_id: str, ok: bool) -> None:
    _client(uri).set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


def log_text(uri: str, run_id: str, text: str, path: str) -> None:
    _client(uri).log_text(run_id, text, path)


def cell_runs(uri: str, sweep_name: str, status: str | None = "FINISHED", parent: str | None = None) -> list[mlflow.entities.Run]:
    """Child runs of every invocation of the sweep, or of one (`parent`), newest first,
    optionally of one status."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(sweep_name)
    if experiment is None:
        return []
    query = f"tags.`{KIND}` = 'cell'" + (f" and attributes.status = '{status}'" if status else "")
    query += f" and tags.`mlflow.parentRunId` = '{parent}'" if parent else ""
    return client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50000)


def finished_run_keys(uri: str, sweep_name: str) -> set[str]:
    return {run.data.tags["run_key"] for run in cell_runs(uri, sweep_name)}


class CellRun:
    """A cell's child run, as the job sees it: log params, metrics and artifacts to it."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, str]) -> None:
        for key, value in params.items():
            self.client.log_param(self.run_id, key, value)

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.client.log_metric(self.run_id, key, float(value), step=step)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.log_metric(key, value)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_table(self, rows: list[dict], path: str) -> None:
        """Rows as an MLflow table artifact (`path` ends in .json): the UI shows it as a table."""
        import pandas as pd

        self.client.log_table(self.run_id, pd.DataFrame(rows), path)

    def log_dir(self, local_dir: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def scratch_dir(self):
        """A temporary directory to write files into before logging them."""
        return tempfile.TemporaryDirectory(prefix="peftbench-")


@contextmanager
def cell_run(uri: str, cell, parent_run_id: str | None, extra_tags: dict[str, str] | None = None):
    """Open the cell's child run; it ends FINISHED, or FAILED with the error as tag `error`."""
    client = _client(uri)
    tags = {KIND: "cell", "run_key": cell.run_key, "sweep": cell.sweep, "method": cell.label, "backbone": cell.backbone, **(extra_tags or {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(
        experiment_id(uri, cell.sweep), run_name=f"{cell.label}-{cell.backbone}-{cell.regime.name}-s{cell.seed}", tags=tags
    )
    handle = CellRun(client, run.info.run_id)
    handle.log_params(cell.params())
    try:
        yield handle
    except BaseException as err:
        client.set_tag(run.info.run_id, "error", f"{type(err).__name__}: {err}"[:5000])
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of a stepped metric, in step order."""
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, key))


def read_artifact_text(uri: str, run_id: str, path: str) -> str | None:
    """The text of a run's artifact, or None if the run has none at `path`."""
    client = _client(uri)
    folder = path.rpartition("/")[0] or None
    if path not in {a.path for a in client.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def list_artifacts(uri: str, run_id: str, folder: str | None = None) -> list[str]:
    return [a.path for a in _client(uri).list_artifacts(run_id, folder)]


def latest_sweep_run(uri: str, sweep_name: str) -> mlflow.entities.Run | None:
    """The newest parent run of the sweep (one per `pipeline run` invocation)."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(sweep_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.`{KIND}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def nightly_runs(uri: str, sweep_name: str) -> list[mlflow.entities.Run]:
    """The sweep's parent runs made by `pipeline nightly` (tag `nightly`), newest first."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(sweep_name)
    if experiment is None:
        return []
    query = f"tags.`{KIND}` = 'sweep' and tags.nightly LIKE '%'"
    return client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50000)


def get_run(uri: str, run_id: str) -> mlflow.entities.Run | None:
    """The run with this id, or None when the store has none."""
    try:
        return _client(uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def fail_running(uri: str, cell, parent_run_id: str | None, reason: str) -> None:
    """Close the cell's RUNNING run(s) under this sweep invocation as FAILED with `reason`:
    its job died without closing them (a killed worker)."""
    client = _client(uri)
    query = f"tags.run_key = '{cell.run_key}' and attributes.status = 'RUNNING'"
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    for run in client.search_runs([experiment_id(uri, cell.sweep)], query):
        client.set_tag(run.info.run_id, "error", reason[:5000])
        client.set_terminated(run.info.run_id, "FAILED")


def set_tag(uri: str, run_id: str, key: str, value: str) -> None:
    _client(uri).set_tag(run_id, key, value)

"""The cell's MLflow writer: the child run one job opens, logs into and closes.

Layout in the store: one experiment per sweep name; one parent run per `pipeline run`
invocation (tag `peftbench.kind=sweep`, written by the driver, `pipeline.track`); one child run
per cell (tag `peftbench.kind=cell`, `run_key`, `mlflow.parentRunId`) holding the resolved cell
as params, the metrics and the artifacts. Jobs write their own child run here; the driver
reads them back by run_key.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.tracking import MlflowClient

from jobs import provenance

KIND = "peftbench.kind"
# The reports read one small artifact per cell: MLflow's bar for each would be a line per cell in a log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def client(uri: str) -> MlflowClient:
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
    store = client(uri)
    experiment = store.get_experiment_by_name(sweep_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return store.create_experiment(sweep_name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # another writer created it first
        return store.get_experiment_by_name(sweep_name).experiment_id


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

    def log_input(self, rows: list[dict], name: str, context: str, digest: str, source: str) -> None:
        """Rows as an MLflow dataset input of the run (name, digest, schema and row count; the
        rows themselves are not stored). The digest is cut to the store's 36 characters."""
        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = mlflow.data.from_pandas(pd.DataFrame(rows), source=source, name=name, digest=digest[:36])
        self.client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    def log_dir(self, local_dir: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def scratch_dir(self):
        """A temporary directory to write files into before logging them."""
        return tempfile.TemporaryDirectory(prefix="peftbench-")


@contextmanager
def cell_run(uri: str, cell, parent_run_id: str | None, extra_tags: dict[str, str] | None = None):
    """Open the cell's child run, with the driver's commit tags of its parent run; it ends
    FINISHED, or FAILED with the error as tag `error`."""
    store = client(uri)
    tags = {KIND: "cell", "run_key": cell.run_key, "sweep": cell.sweep, "method": cell.label, "backbone": cell.backbone, **(extra_tags or {})}
    tags.update(provenance.code_tags(store.get_run(parent_run_id).data.tags if parent_run_id else None))
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = store.create_run(
        experiment_id(uri, cell.sweep), run_name=f"{cell.label}-{cell.backbone}-{cell.regime.name}-s{cell.seed}", tags=tags
    )
    handle = CellRun(store, run.info.run_id)
    handle.log_params(cell.params())
    try:
        yield handle
    except BaseException as err:
        store.set_tag(run.info.run_id, "error", f"{type(err).__name__}: {err}"[:5000])
        store.log_text(run.info.run_id, traceback.format_exc(), "error.txt")
        store.set_terminated(run.info.run_id, "FAILED")
        raise
    store.set_terminated(run.info.run_id, "FINISHED")



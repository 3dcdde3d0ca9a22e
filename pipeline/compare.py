"""MLflow runs -> the results frame (and per-item frame) -> the comparison report and report.html.

The results frame has one row per (run, task, metric): run_key, sweep, method, backbone,
regime, seed, task, metric, value, plus efficiency columns (trainable_params,
trainable_pct, tokens_per_s, peak_mem_mb) and the run's provenance tags as columns (`git.commit`,
`version.torch`, `hw.cpu`, `data.train_sha256`, ...: `jobs.provenance.TAGS`). Everything
downstream works on the frame alone, so it can come from MLflow or from a CSV.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from dashboards import report as report_page
from pipeline import provenance, published, stats, tables, track

EFFICIENCY = {
    "trainable_params": "params/trainable",
    "trainable_pct": "params/trainable_pct",
    "tokens_per_s": "train/tokens_per_s",
    "peak_mem_mb": "train/peak_mem_mb",
}


def results_frame(uri: str, sweep_name: str, run_keys: set[str] | None = None, parent: str | None = None) -> pd.DataFrame:
    """The newest FINISHED run of each cell of the sweep (optionally only the given run_keys,
    or only the runs of one invocation: `parent`, its parent run)."""
    rows, seen = [], set()
    for run in track.cell_runs(uri, sweep_name, parent=parent):
        key = run.data.tags["run_key"]
        if key in seen or (run_keys is not None and key not in run_keys):
            continue
        seen.add(key)
        params, metrics = run.data.params, run.data.metrics
        base = {
            "run_key": key,
            "run_id": run.info.run_id,
            "sweep": sweep_name,
            "method": params["label"],
            "backbone": params["backbone"],
            "regime": params["regime.name"],
            "n_train": _number(params.get("regime.n_examples")),  # what a claim's training-set size is checked against
            "seed": int(params["seed"]),
            "hparams": json.dumps({k.removeprefix("hparams."): _param_value(v) for k, v in params.items() if k.startswith("hparams.")}, sort_keys=True),
            **{column: metrics.get(name, math.nan) for column, name in EFFICIENCY.items()},
            **{tag: run.data.tags.get(tag) for tag in provenance.TAGS},
        }
        for name, value in metrics.items():
            task, _, metric = name.partition("/")
            if task in ("params", "train", "avg"):
                continue
            rows.append({**base, "task": task, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def _number(text: str | None) -> float:
    """A count param as a number; NaN for `full` or when absent."""
    value = _param_value(text) if text is not None else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def _param_value(text: str):
    """An MLflow param (always a string) back to the number/list it was, where it was one."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def items_frame(uri: str, results: pd.DataFrame) -> pd.DataFrame:
    """Per-item scores of the runs in `results`, for paired tests: run_key, method, backbone,
    regime, seed, task, doc_id, gold, pred, acc (and acc_norm where the task has it)."""
    rows = []
    keys = ["run_key", "run_id", "method", "backbone", "regime", "seed"]
    for run in results[keys].drop_duplicates().itertuples(index=False):
        for path in track.list_artifacts(uri, run.run_id, "eval"):
            name = path.rpartition("/")[2]
            if not (name.startswith("samples_") and name.endswith(".jsonl")):
                continue
            task = name.removeprefix("samples_").removesuffix(".jsonl")
            text = track.read_artifact_text(uri, run.run_id, path) or ""
            base = {k: getattr(run, k) for k in keys if k != "run_id"}
            rows += [{**base, "task": task, **json.loads(line)} for line in text.splitlines() if line]
    return pd.DataFrame(rows)


def sweep_results(uri: str, sweep_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, items) of the cells of the sweep's newest invocation, from MLflow alone."""
    cells = track.sweep_cells(uri, sweep_name)
    if cells is None:
        raise ValueError(f"no sweep named {sweep_name!r} in {uri}")
    results = results_frame(uri, sweep_name, {c["run_key"] for c in cells})
    if results.empty:
        raise ValueError(f"sweep {sweep_name!r} has no finished cells in {uri}")
    return results, items_frame(uri, results)


def log_report(uri: str, parent_run_id: str, results: pd.DataFrame, items: pd.DataFrame | None, **options) -> dict[str, str]:
    """Render the comparison report in every format, with the provenance footer, and log each
    to the sweep's parent run as `comparison.<md|html|tex|csv>`; return the texts. `options` go
    to `tables.render_reports`."""
    texts = _with_footer(tables.render_reports(results, items if items is not None and len(items) else None, **options), results)
    for fmt, text in texts.items():
        track.log_text(uri, parent_run_id, text, f"comparison.{fmt}")
    return texts


def report(source: str, uri: str, fmt: str = "md", **options) -> str:
    """The comparison report of a sweep (by name, from MLflow alone) or of a results CSV (a
    saved results frame or a paper's table: a pseudo-sweep). A sweep's report is also logged,
    in every format, to its newest parent run. Bad input raises ValueError in one line."""
    if source.endswith(".csv"):
        if not Path(source).is_file():
            raise ValueError(f"{source}: no such results file")
        results = published.load_results_csv(source)
        return _with_footer({fmt: tables.render_report(results, None, fmt, **options)}, results)[fmt]
    results, items = sweep_results(uri, source)
    texts = log_report(uri, track.latest_sweep_run(uri, source).info.run_id, results, items, **options)
    return texts[fmt]


def _with_footer(texts: dict[str, str], results: pd.DataFrame) -> dict[str, str]:
    """The report texts with the provenance footer after each, but the tidy csv."""
    lines = provenance.footer(results)
    return {fmt: text if fmt == "csv" else text.rstrip("\n") + "\n\n" + provenance.render(lines, fmt) for fmt, text in texts.items()}


def run_data(uri: str, results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """What the figures draw beyond the results: loss history, module diagnostics, φ curves."""
    runs = results[["run_id", "method", "seed"]].drop_duplicates()
    history, modules, curves = [], [], []
    for run in runs.itertuples(index=False):
        history += [{"run_id": run.run_id, "method": run.method, "seed": run.seed, "step": s, "loss": v} for s, v in track.metric_history(uri, run.run_id, "train/loss")]
        for stage in ("early", "middle", "final"):
            text = track.read_artifact_text(uri, run.run_id, f"analysis/{stage}.json")
            if text is None:
                continue
            record = json.loads(text)
            for entry in record["modules"]:
                base = {"run_id": run.run_id, "method": run.method, "seed": run.seed, "module": entry["module"], "step": record["step"], "stage": stage}
                if stage == "final":
                    modules.append({**base, **{k: entry.get(k) for k in ("stable_rank", "stable_rank_centered", "spectrum", "shift_map")}})
                if "phi" in entry:
                    curves.append({**base, "z": entry["phi"]["z"], "phi": entry["phi"]["phi"]})
    return {
        "history": pd.DataFrame(history),
        "modules": pd.DataFrame(modules),
        "curves": pd.DataFrame(curves),
    }


def method_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per backbone × regime × method: mean task-average score over seeds and the cost columns."""
    values = stats.seed_values(results).dropna(subset=["value"])
    n_tasks = values.groupby(["backbone", "regime"])["task"].transform("nunique")
    complete = values.groupby(["backbone", "regime", "method", "seed"])["task"].transform("nunique") == n_tasks
    # the table's Average: a seed counts only with every task of its block, as in pipeline.tables
    per_seed = values[complete].groupby(["backbone", "regime", "method", "seed"]).value.mean() / 100
    avg = per_seed.groupby(["backbone", "regime", "method"]).mean().rename("avg")
    cost = results.groupby(["backbone", "regime", "method"])[["trainable_params", "tokens_per_s", "peak_mem_mb"]].mean()
    return cost.join(avg).reset_index()


def log_html_report(uri: str, parent_run_id: str, sweep_name: str, results: pd.DataFrame, items: pd.DataFrame | None, tables_html: str, baseline: str | None = None) -> None:
    """Render the sweep's report.html (dashboards) and log it to its parent run, and each cell's
    own page to its child run, both as `report.html`."""
    data = run_data(uri, results)
    summary = method_summary(results)
    chosen = tables.resolve_baseline(sorted(summary.method.unique()), baseline)
    page = report_page.build(sweep_name, results.run_key.nunique(), tables_html, summary, chosen, data)
    track.log_text(uri, parent_run_id, page, "report.html")
    for run_id, rows in results.groupby("run_id"):
        own = {name: frame[frame.run_id == run_id] if len(frame) else frame for name, frame in data.items()}
        own_items = items[items.run_key == rows.run_key.iloc[0]] if items is not None and len(items) else pd.DataFrame()
        track.log_text(uri, run_id, report_page.cell_page(rows, own, own_items), "report.html")

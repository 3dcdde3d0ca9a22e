"""MLflow runs -> the results frame -> the comparison table.

The results frame has one row per (run, task, metric): run_key, sweep, method, backbone,
regime, seed, task, metric, value, plus efficiency columns (trainable_params,
trainable_pct, tokens_per_s, peak_mem_mb). Everything downstream works on the frame alone,
so it can come from MLflow or from a CSV.
"""

from __future__ import annotations

import math

import pandas as pd

from pipeline import track

EFFICIENCY = {
    "trainable_params": "params/trainable",
    "trainable_pct": "params/trainable_pct",
    "tokens_per_s": "train/tokens_per_s",
    "peak_mem_mb": "train/peak_mem_mb",
}


def results_frame(uri: str, sweep_name: str, run_keys: set[str] | None = None) -> pd.DataFrame:
    """The newest FINISHED run of each cell of the sweep (optionally only the given run_keys)."""
    rows, seen = [], set()
    for run in track.cell_runs(uri, sweep_name):
        key = run.data.tags["run_key"]
        if key in seen or (run_keys is not None and key not in run_keys):
            continue
        seen.add(key)
        params, metrics = run.data.params, run.data.metrics
        base = {
            "run_key": key,
            "sweep": sweep_name,
            "method": params["label"],
            "backbone": params["backbone"],
            "regime": params["regime.name"],
            "seed": int(params["seed"]),
            **{column: metrics.get(name, math.nan) for column, name in EFFICIENCY.items()},
        }
        for name, value in metrics.items():
            task, _, metric = name.partition("/")
            if task in ("params", "train", "avg"):
                continue
            rows.append({**base, "task": task, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def summary_table(frame: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Method × task `mean ± std` over seeds (n seeds shown), an average column, trainable params."""
    if frame.empty:
        return pd.DataFrame()
    scores = frame[frame.metric == metric]
    wide = scores.pivot_table(index=["backbone", "regime", "method", "seed"], columns="task", values="value")
    tasks = list(wide.columns)
    wide["avg"] = wide[tasks].mean(axis=1)
    grouped = wide.groupby(level=["backbone", "regime", "method"], sort=False)
    mean, std, n = grouped.mean(), grouped.std(ddof=1).fillna(0.0), grouped.size()
    table = pd.DataFrame(index=mean.index)
    for column in tasks + ["avg"]:
        table[column] = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(mean[column], std[column])]
    table["n"] = n
    params = frame.groupby(["backbone", "regime", "method"]).trainable_params.first()
    table["trainable params"] = [f"{int(params[i]):,}" for i in table.index]
    return table.reset_index()


def to_markdown(table: pd.DataFrame, metric: str = "acc") -> str:
    if table.empty:
        return "(no finished runs)"
    return f"{metric} (%), mean ± std over n seeds\n\n" + table.to_markdown(index=False)


def to_html(table: pd.DataFrame, metric: str = "acc") -> str:
    body = table.to_html(index=False, border=0) if not table.empty else "<p>(no finished runs)</p>"
    return f"<html><head><meta charset='utf-8'><title>peftbench</title></head><body><p>{metric} (%), mean ± std over n seeds</p>{body}</body></html>"

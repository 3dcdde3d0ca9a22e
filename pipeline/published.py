"""Results frames from CSV: a saved results frame, or a paper's table typed as data.

Published numbers load as a pseudo-sweep so they render, and test, like measured runs. The
wide layouts of ../shared/claims/*.csv (one value per row, `mean`/`std` or `acc`/`value`,
percent scale) are converted to the results-frame contract: fraction metrics back to fractions,
the paper's std kept in `value_std`, seed "published" (a published row is already a mean over
the paper's seeds; it is not one of ours).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.stats import FRACTION_METRICS, PUBLISHED_SEED, REPORTED_AVERAGE

RESULT_COLUMNS = ["run_key", "sweep", "method", "backbone", "regime", "seed", "task", "metric", "value"]
EFFICIENCY_COLUMNS = ["trainable_params", "trainable_pct", "tokens_per_s", "peak_mem_mb"]
# GLUE's own metric per task (as LR-LoRA Table 2 reports it); accuracy elsewhere.
GLUE_METRICS = {"cola": "mcc", "stsb": "pearson"}


def load_results_csv(path: str | Path) -> pd.DataFrame:
    """A results frame from `path`: the contract's own columns, or a paper's table (adapted)."""
    frame = pd.read_csv(path)
    if set(RESULT_COLUMNS) <= set(frame.columns):
        for column in EFFICIENCY_COLUMNS:
            frame[column] = frame[column] if column in frame else np.nan
        return frame
    if {"paper", "table", "method"} <= set(frame.columns):
        return from_published(frame)
    missing = sorted(set(RESULT_COLUMNS) - set(frame.columns))
    raise ValueError(
        f"{path}: neither a results frame (missing columns: {', '.join(missing)}) "
        "nor a published table (needs paper, table, method and mean/acc/value)"
    )


def _params(text) -> float:
    """'0.7M' -> 700000.0, as the papers write parameter counts."""
    match = re.fullmatch(r"([\d.]+)\s*([KMB]?)", str(text).strip())
    if not match:
        return np.nan
    return float(match[1]) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}[match[2]]


def from_published(table: pd.DataFrame) -> pd.DataFrame:
    """Convert a typed paper table (../shared/claims layout) into a results frame."""
    value = next(c for c in ("value", "mean", "acc") if c in table)
    out = pd.DataFrame(
        {
            "sweep": table["paper"] + "_table" + table["table"].astype(str),
            "method": table["method"],
            "backbone": table.get("backbone", "unspecified"),
            "regime": table.get("regime", "as published"),
            "seed": PUBLISHED_SEED,
            "value": table[value].astype(float),
            "value_std": table["std"].astype(float) if "std" in table else np.nan,
        }
    )
    if "task" in table:
        out["task"] = table["task"]
        out["metric"] = [("avg" if t == REPORTED_AVERAGE else GLUE_METRICS.get(t, "acc")) for t in table["task"]]
    else:  # one number per metric (avg_acc_8tasks, squad_f1) or per row: averages are not tasks
        metric = table["metric"] if "metric" in table else pd.Series("avg", index=table.index)
        out["task"] = [REPORTED_AVERAGE if str(m).startswith("avg") else m for m in metric]
        out["metric"] = ["avg" if str(m).startswith("avg") else m for m in metric]
    rank = next((c for c in ("rank", "rank_or_size") if c in table), None)
    if rank:
        out["hparams"] = [{"r": int(r)} for r in table[rank]]
    to_fraction = np.where(out["metric"].isin(FRACTION_METRICS), 0.01, 1.0)
    out["value"] *= to_fraction
    out["value_std"] *= to_fraction
    out["trainable_params"] = table["params"].map(_params) if "params" in table else np.nan
    out["trainable_pct"] = table["params_pct"].astype(float) if "params_pct" in table else np.nan
    out["tokens_per_s"] = np.nan
    out["peak_mem_mb"] = np.nan
    hparams = out["hparams"].map(lambda h: f"-r{h['r']}") if "hparams" in out else ""
    out["run_key"] = out["sweep"] + ":" + out["backbone"] + ":" + out["regime"] + ":" + out["method"] + hparams
    return out[RESULT_COLUMNS + EFFICIENCY_COLUMNS + ["value_std"] + (["hparams"] if rank else [])]

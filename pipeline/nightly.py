"""`python -m pipeline nightly`: run the fixed nightly suite and gate it against an earlier night.

Every night is a new parent run in the suite's experiment (tag `nightly` = the night's UTC
start time) and every cell trains again: the run_key skip of `run` is off, so tonight is a new
measurement, not a lookup; cells are told apart by their parent run, not their run_key.

The gate (a regression exits 1); its settings are the suite's `gate:` (spec.GateSpec):
- Accuracy, per backbone × regime × method × task, the unit is a seed's run: tonight's per-seed
  scores against the same cell's per-seed scores over the last `nights` accepted nights, a
  one-sided pooled two-sample t-test of "tonight is worse by more than `margin` points", Holm
  over every such comparison of the night. Items are not replicates: a harmless change that
  re-draws every training run moves all of a run's items together. Scores that repeat exactly
  from night to night (deterministic training) count once. With no spread at all in either
  night the decision is exact: a drop larger than the margin is a regression.
- Throughput and memory, per backbone × regime × method: each as a ratio to the reference
  method (`gate.reference`, LoRA) measured the same night, so a slower runner moves every
  method and its reference together. The band is the earlier nights' mean ratio ± max(K_STD ×
  their std, a relative floor); a ratio outside it on the worse side is a regression.

`--against last` takes the newest accepted nights (passed, or set the baseline), so a
regression stays flagged night after night until fixed, or until a night is accepted by naming
it: `--against RUN_ID` compares with that night alone.
"""

from __future__ import annotations

import html
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from pipeline import compare, spec, stats, track
from pipeline import sweep as sweep_runner

K_STD = 3.0
FLOOR = {"tokens_per_s": 0.25, "peak_mem_mb": 0.10}  # shared 2-core runners: tokens/s swings more than memory
WORSE = {"tokens_per_s": -1, "peak_mem_mb": +1}  # the direction that is a regression
VERDICT = "nightly.verdict"
ACCEPTED = ("baseline", "pass")


class NightlyError(ValueError):
    """Bad input to the nightly (no such earlier run); one line."""


def history(uri: str, name: str, against: str, nights: int) -> list[str]:
    """The parent runs tonight is compared with, newest first: the `nights` newest accepted
    nights for `last` (empty when none passed yet), or the one night named by its run id."""
    if against == "last":
        return [r.info.run_id for r in track.nightly_runs(uri, name) if r.data.tags.get(VERDICT) in ACCEPTED][:nights]
    run = track.get_run(uri, against)
    if run is None or run.data.tags.get("nightly") is None or run.data.tags.get("sweep") != name:
        raise NightlyError(f"--against {against}: no nightly run of {name!r} with that id in {uri}")
    return [against]


def nightly(spec_path: str, sweeps: list[spec.Sweep], uri: str, refs: list[str], address: str | None = None, out: str | None = None) -> int:
    """Run tonight's cells, gate them against the nights `refs` (empty: tonight is the
    baseline), log the report to tonight's parent run; return the exit code."""
    name, gate = sweeps[0].name, sweeps[0].gate or spec.GateSpec()
    cells = spec.expand_all(sweeps)
    night = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    parent, failed = sweep_runner.execute(
        cells, sweeps[0], Path(spec_path).read_text(), uri, address, None, skip_finished=False, tags={"nightly": night}
    )
    tonight = compare.results_frame(uri, name, parent=parent)
    if not refs:
        accuracy, cost = pd.DataFrame(), pd.DataFrame()
    else:
        earlier = [compare.results_frame(uri, name, parent=ref) for ref in refs]
        accuracy = accuracy_gate(tonight, earlier, gate.margin, gate.alpha)
        cost = cost_gate(tonight, earlier, gate.reference)
    regressed = bool(accuracy.get("regression", pd.Series(dtype=bool)).any() or cost.get("regression", pd.Series(dtype=bool)).any())
    verdict = "failed" if failed else "baseline" if not refs else "regression" if regressed else "pass"
    md, page = render(night, refs, gate, verdict, scores(tonight), accuracy, cost, len(cells), len(failed))
    track.log_text(uri, parent, md, "nightly.md")
    track.log_text(uri, parent, page, "nightly.html")
    track.set_tag(uri, parent, VERDICT, verdict)
    track.end_run(uri, parent, ok=not failed)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "nightly.md").write_text(md)
        (Path(out) / "nightly.html").write_text(page)
    print(md)
    print(f"nightly {parent}: {verdict}", file=sys.stderr)
    return 0 if verdict in ACCEPTED else 1


def drop_p(tonight, earlier, margin: float) -> np.ndarray:
    """p of "tonight is below the earlier runs by more than `margin`" along the last axis:
    one-sided pooled two-sample t-test (scipy), H0 tonight ≥ earlier − margin; batched over
    any leading axes, so a simulation of many nights is one call."""
    return scipy_stats.ttest_ind(np.asarray(tonight, float) + margin, np.asarray(earlier, float), axis=-1, alternative="less").pvalue


def worse_by_more_than(tonight, earlier, margin: float) -> stats.Significance:
    """`drop_p` for one cell, as a named test. No spread in either night: the decision is exact."""
    x, y = np.asarray(tonight, float), np.asarray(earlier, float)
    if len(x) + len(y) <= 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        drop = y.mean() - x.mean()
        return stats.Significance(f"exact (no spread): {len(x)} run(s) tonight vs {len(y)} earlier, margin {margin:g}",
                                  0.0 if drop > margin else 1.0, n=len(x))
    name = f"one-sided t-test, {len(x)} run(s) tonight vs {len(y)} earlier, margin {margin:g}"
    return stats.Significance(name, float(drop_p(x, y, margin)), n=len(x))


def _runs(values: pd.DataFrame) -> np.ndarray:
    """Per-seed scores of earlier nights, a score that repeats for its seed counted once."""
    return values.drop_duplicates(["seed", "value"])["value"].to_numpy(float)


def accuracy_gate(tonight: pd.DataFrame, earlier: list[pd.DataFrame], margin: float = 0.0, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Per backbone × regime × method × task: tonight's mean over seeds and the earlier nights'
    (points), `worse_by_more_than`, Holm over all rows; `regression` when significant."""
    keys = stats.BLOCK + ["method", "task"]
    cols = keys + ["seeds", "runs_earlier", "earlier", "tonight", "diff", "test", "regression"]
    now = stats.seed_values(tonight) if not tonight.empty else pd.DataFrame(columns=keys)
    before = [stats.seed_values(frame) for frame in earlier if not frame.empty]
    if now.empty or not before:
        return pd.DataFrame(columns=cols)
    before = pd.concat(before, ignore_index=True)
    before, now = before[np.isfinite(before["value"])], now[np.isfinite(now["value"])]
    rows = []
    for key, cell in now.groupby(keys):
        past = before[(before[keys] == pd.Series(dict(zip(keys, key)))).all(axis=1)]
        if past.empty:
            continue
        runs = _runs(past)
        x = cell["value"].to_numpy(float)
        rows.append(dict(zip(keys, key), seeds=len(x), runs_earlier=len(runs), earlier=runs.mean(), tonight=x.mean(),
                         diff=x.mean() - runs.mean(), test=worse_by_more_than(x, runs, margin)))
    if not rows:
        return pd.DataFrame(columns=cols)
    for row, corrected in zip(rows, stats.holm([r["test"] for r in rows], alpha)):
        row["test"] = corrected
        row["regression"] = corrected.significant(alpha)
    return pd.DataFrame(rows, columns=cols)


def _relative(frame: pd.DataFrame, metric: str, reference: str) -> pd.Series:
    """Per backbone × regime × method: the night's mean `metric` over its cells ÷ the reference method's."""
    keys = stats.BLOCK + ["method"]
    means = frame.drop_duplicates("run_key").dropna(subset=[metric]).groupby(keys)[metric].mean()
    if means.empty:
        return means
    base = means.xs(reference, level="method") if reference in means.index.get_level_values("method") else None
    if base is None:
        return means.iloc[:0]
    return means / means.index.droplevel("method").map(base).to_numpy()


def cost_gate(tonight: pd.DataFrame, earlier: list[pd.DataFrame], reference: str = "lora") -> pd.DataFrame:
    """Per backbone × regime × method (the reference excepted) and cost metric: the method's ratio
    to the reference tonight, the earlier nights' mean ratio ± band; `regression` outside it on
    the worse side."""
    cols = stats.BLOCK + ["method", "metric", "earlier", "band", "tonight", "nights_earlier", "regression"]
    rows = []
    for metric, worse in WORSE.items():
        now = _relative(tonight, metric, reference)
        before = pd.concat([_relative(frame, metric, reference).rename(i) for i, frame in enumerate(earlier)], axis=1) if earlier else pd.DataFrame()
        for key, ratio in now.items():
            if key[-1] == reference or key not in before.index:
                continue
            past = before.loc[key].dropna()
            if past.empty:
                continue
            mean, std = past.mean(), past.std(ddof=1) if len(past) > 1 else 0.0
            band = max(K_STD * std, FLOOR[metric] * abs(mean))
            rows.append(dict(zip(stats.BLOCK + ["method"], key), metric=metric, earlier=mean, band=band, tonight=ratio,
                             nights_earlier=len(past), regression=bool(worse * (ratio - mean) > band)))
    return pd.DataFrame(rows, columns=cols)


def scores(tonight: pd.DataFrame) -> pd.DataFrame:
    """Tonight's own numbers, per backbone × regime × method × task × metric: the score's mean and
    std over seeds (×100: points, as in the accuracy gate), and the method's tokens/s and peak memory (cell means).
    A baseline night has nothing to compare with; this is what it measured."""
    keys = stats.BLOCK + ["method", "task", "metric"]
    cols = keys + ["mean", "std", "seeds", "tokens_per_s", "peak_mem_mb"]
    if tonight.empty:
        return pd.DataFrame(columns=cols)
    table = tonight.assign(value=100 * tonight["value"]).groupby(keys)["value"].agg(mean="mean", std="std", seeds="count").reset_index()
    cost = tonight.drop_duplicates("run_key").groupby(stats.BLOCK + ["method"])[["tokens_per_s", "peak_mem_mb"]].mean().reset_index()
    return table.merge(cost, on=stats.BLOCK + ["method"], how="left")[cols]


def render(night: str, refs: list[str], gate: spec.GateSpec, verdict: str, scores: pd.DataFrame, accuracy: pd.DataFrame,
           cost: pd.DataFrame, n_cells: int, n_failed: int) -> tuple[str, str]:
    """The regression report as (markdown, a self-contained HTML page)."""
    against = (f"Compared with the {len(refs)} newest accepted night(s): " + ", ".join(f"`{r}`" for r in refs) + "."
               if refs else "No earlier accepted night: this night is the baseline.")
    head = [
        f"# Nightly {night}: {verdict}",
        "",
        f"{n_cells} cells, {n_failed} failed. {against}",
        "",
        f"Accuracy: per method × task, tonight's per-seed scores against the same cell's scores over the earlier "
        f"nights (a repeated score counted once), one-sided pooled t-test of a drop larger than {gate.margin:g} points, "
        f"Holm over the {len(accuracy)} comparisons; a regression is p < {gate.alpha} after correction. "
        f"Cost: each method's ratio to {gate.reference} the same night, against the earlier nights' mean ratio ± "
        f"max({K_STD:g} std, " + ", ".join(f"{v:.0%} for {k}" for k, v in FLOOR.items()) + ").",
    ]
    tables = [("Tonight (points: mean and std over seeds)", scores)] if not scores.empty else []
    for title, frame in (("Accuracy against the earlier nights (points)", accuracy), (f"Throughput and memory relative to {gate.reference}, against the earlier nights", cost)):
        if frame.empty:
            continue
        shown = frame.assign(regression=frame["regression"].map({True: "REGRESSION", False: ""}))
        tables.append((title, shown))
    md = "\n".join(head) + "".join(f"\n\n## {title}\n\n{_markdown(frame)}" for title, frame in tables) + "\n"
    body = "".join(f"<h2>{html.escape(t)}</h2>{f.to_html(index=False, float_format=lambda v: f'{v:.2f}', escape=True)}" for t, f in tables)
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in head[2:] if line)
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(head[0][2:])}</title></head><body><h1>{html.escape(head[0][2:])}</h1>{paragraphs}{body}</body></html>\n"
    return md, page


def _markdown(frame: pd.DataFrame) -> str:
    def cell(v) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)

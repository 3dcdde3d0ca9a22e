"""`python -m pipeline nightly`: run the fixed nightly suite and gate it against an earlier night.

Every night is a new parent run in the suite's experiment (tag `nightly` = the night's UTC
start time) and every cell trains again: the run_key skip of `run` is off, so tonight is a new
measurement, not a lookup; cells are told apart by their parent run, not their run_key.

The gate (a regression exits 1):
- Accuracy, per backbone × regime × method × task: exact McNemar on the per-item 0/1 results,
  the items of all seeds pooled as pairs (seed, doc_id) of tonight vs the earlier night; Holm
  over every such comparison of the night. A regression is a corrected p < 0.05 with tonight lower.
- Throughput and memory, per backbone × regime × method: the noise band is the earlier night's
  mean ± max(K_STD × its std over that method's cells (seeds, GLUE tasks), a relative floor).
  Tokens/s below the band or peak memory above it is a regression. The floor keeps a band from
  collapsing to nothing when three timings happen to agree.

`--against last` is the newest earlier night whose gate passed (or that set the baseline), so
a regression stays flagged night after night until fixed, or until a night is accepted by
naming it: `--against RUN_ID`.
"""

from __future__ import annotations

import html
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import compare, spec, stats, track
from pipeline import sweep as sweep_runner

K_STD = 3.0
FLOOR = {"tokens_per_s": 0.25, "peak_mem_mb": 0.10}  # shared 2-core runners: tokens/s swings more than memory
WORSE = {"tokens_per_s": -1, "peak_mem_mb": +1}  # the direction that is a regression
VERDICT = "nightly.verdict"
ACCEPTED = ("baseline", "pass")


class NightlyError(ValueError):
    """Bad input to the nightly (no such earlier run); one line."""


def reference(uri: str, name: str, against: str) -> str | None:
    """The parent run tonight is compared with: `last` (None when no night passed yet) or a run id."""
    if against == "last":
        runs = [r for r in track.nightly_runs(uri, name) if r.data.tags.get(VERDICT) in ACCEPTED]
        return runs[0].info.run_id if runs else None
    run = track.get_run(uri, against)
    if run is None or run.data.tags.get("nightly") is None or run.data.tags.get("sweep") != name:
        raise NightlyError(f"--against {against}: no nightly run of {name!r} with that id in {uri}")
    return against


def nightly(spec_path: str, sweeps: list[spec.Sweep], uri: str, ref: str | None, address: str | None = None, out: str | None = None) -> int:
    """Run tonight's cells, gate them against the night `ref` (None: tonight is the baseline),
    log the report to tonight's parent run; return the exit code."""
    name = sweeps[0].name
    cells = spec.expand_all(sweeps)
    night = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    parent, failed = sweep_runner.execute(
        cells, sweeps[0], Path(spec_path).read_text(), uri, address, None, skip_finished=False, tags={"nightly": night}
    )
    tonight = compare.results_frame(uri, name, parent=parent)
    if ref is None:
        accuracy, cost = pd.DataFrame(), pd.DataFrame()
    else:
        earlier = compare.results_frame(uri, name, parent=ref)
        accuracy = accuracy_gate(_items(uri, tonight), _items(uri, earlier))
        cost = cost_gate(tonight, earlier)
    regressed = bool(accuracy.get("regression", pd.Series(dtype=bool)).any() or cost.get("regression", pd.Series(dtype=bool)).any())
    verdict = "failed" if failed else "baseline" if ref is None else "regression" if regressed else "pass"
    md, page = render(night, ref, verdict, scores(tonight), accuracy, cost, len(cells), len(failed))
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


def _items(uri: str, results: pd.DataFrame) -> pd.DataFrame:
    return compare.items_frame(uri, results) if not results.empty else pd.DataFrame()


def accuracy_gate(tonight: pd.DataFrame, earlier: pd.DataFrame, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Per backbone × regime × method × task: both nights' accuracy (points), exact McNemar over
    the items of all seeds, Holm over all rows; `regression` when significantly lower tonight."""
    cols = stats.BLOCK + ["method", "task", "n_items", "earlier", "tonight", "diff", "test", "regression"]
    if tonight.empty or earlier.empty or "acc" not in tonight or "acc" not in earlier:
        return pd.DataFrame(columns=cols)
    # stats.paired_items pairs two rows of a frame by `method`: the nights become the rows.
    both = pd.concat([tonight.assign(night="tonight"), earlier.assign(night="earlier")])
    both = both[both["acc"].notna()]
    rows = []
    for method, frame in both.groupby("method"):
        pairs = stats.paired_items(frame.drop(columns="method").rename(columns={"night": "method"}), "tonight", "earlier")
        for key, pair in pairs.groupby(stats.BLOCK + ["task"]):
            a, b = pair["acc_a"].to_numpy(), pair["acc_b"].to_numpy()
            test = stats.mcnemar_exact(a, b) if np.isin(np.r_[a, b], (0, 1)).all() else stats.NOT_BINARY
            rows.append(dict(zip(stats.BLOCK, key[:2]), method=method, task=key[2], n_items=len(pair),
                             earlier=100 * b.mean(), tonight=100 * a.mean(), diff=100 * (a.mean() - b.mean()), test=test))
    if not rows:
        return pd.DataFrame(columns=cols)
    for row, corrected in zip(rows, stats.holm([r["test"] for r in rows], alpha)):
        row["test"] = corrected
        row["regression"] = corrected.significant(alpha) and row["diff"] < 0
    return pd.DataFrame(rows, columns=cols)


def cost_gate(tonight: pd.DataFrame, earlier: pd.DataFrame) -> pd.DataFrame:
    """Per backbone × regime × method and cost metric: the earlier night's mean ± band (the
    noise band) and tonight's mean; `regression` when tonight is outside it on the worse side."""
    cols = stats.BLOCK + ["method", "metric", "earlier", "band", "tonight", "n_earlier", "regression"]
    keys = stats.BLOCK + ["method"]
    rows = []
    for metric, worse in WORSE.items():
        per_cell = {night: frame.drop_duplicates("run_key").dropna(subset=[metric]) for night, frame in (("tonight", tonight), ("earlier", earlier))}
        base = per_cell["earlier"].groupby(keys)[metric].agg(["mean", "std", "count"])
        now = per_cell["tonight"].groupby(keys)[metric].mean()
        for key, mean_now in now.items():
            if key not in base.index:
                continue
            mean, std, n = base.loc[key]
            band = max(K_STD * (0.0 if math.isnan(std) else std), FLOOR[metric] * abs(mean))
            rows.append(dict(zip(keys, key), metric=metric, earlier=mean, band=band, tonight=mean_now, n_earlier=int(n),
                             regression=bool(worse * (mean_now - mean) > band)))
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


def render(night: str, ref: str | None, verdict: str, scores: pd.DataFrame, accuracy: pd.DataFrame, cost: pd.DataFrame,
           n_cells: int, n_failed: int) -> tuple[str, str]:
    """The regression report as (markdown, a self-contained HTML page)."""
    head = [
        f"# Nightly {night}: {verdict}",
        "",
        f"{n_cells} cells, {n_failed} failed. "
        + ("No earlier passing night: this night is the baseline." if ref is None else f"Compared with nightly run `{ref}`."),
        "",
        f"Accuracy: exact McNemar per method × task on per-item results pooled over seeds, Holm over the "
        f"{len(accuracy)} comparisons; a regression is p < {stats.ALPHA} after correction with tonight lower. "
        f"Cost: the earlier night's mean ± max({K_STD:g} std, "
        + ", ".join(f"{v:.0%} for {k}" for k, v in FLOOR.items())
        + ") over its cells of the method.",
    ]
    tables = [("Tonight (points: mean and std over seeds)", scores)] if not scores.empty else []
    for title, frame in (("Accuracy against the earlier night (points)", accuracy), ("Throughput and memory against the earlier night", cost)):
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

"""The main comparison table, built from a results frame and rendered as md, html, tex or csv.

One block per backbone × regime; a row per method (with the hyperparameters that tell its rows
apart); a column per task and their average. A cell is "mean ± std" over seeds with n, the best
mean in a column is bold, and an arrow marks a significant difference from the baseline method
after Holm–Bonferroni. Cost sits beside accuracy: trainable parameters, and tokens/s and peak
memory relative to the baseline (LoRA by default).
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from jobs.contract import row_label
from pipeline import claims as claims_check
from pipeline import stats
from pipeline.published import EFFICIENCY_COLUMNS
from pipeline.stats import ALPHA, BLOCK, PUBLISHED_SEED, REPORTED_AVERAGE

AVERAGE = "Average"
UP, DOWN = "↑", "↓"
FORMATS = ("md", "html", "tex", "csv")


@dataclass
class Block:
    """One backbone × regime: `cells` has one row per (row, column) with numbers and marks."""

    backbone: str
    regime: str
    columns: list[str]
    cells: pd.DataFrame  # row, column, mean, std, n, published, best, mark, test
    cost: pd.DataFrame  # index row: params, tokens_per_s (÷ baseline), peak_mem (÷ baseline)


@dataclass
class ComparisonTable:
    baseline: str
    blocks: list[Block]
    legend: list[str] = field(default_factory=list)
    average_tests: pd.DataFrame | None = None  # stats.across_tasks with its corrected tests, for the report's detail
    task_tests: pd.DataFrame | None = None  # _task_tests, likewise
    corrected: dict[tuple, stats.Significance] = field(default_factory=dict)  # the report's one family, by family_key


def default_baseline(methods: list[str]) -> str:
    """LoRA when it ran (the row named lora, else its first grid row `lora(...)`), else the first row."""
    return next((m for m in methods if m == "lora"), next((m for m in methods if m.startswith("lora(")), methods[0]))


def resolve_baseline(methods: list[str], baseline: str | None) -> str:
    """The row the table tests against: `baseline` itself, its first row with hyperparameters
    shown ("lora" finds "lora(r=8)"), or the default when none is asked for."""
    if baseline is None:
        return default_baseline(methods)
    found = next((m for m in methods if m == baseline), next((m for m in methods if m.startswith(f"{baseline}(")), None))
    if found is None:
        raise ValueError(f"baseline {baseline!r} is not a method of these results (methods: {', '.join(methods)})")
    return found


def row_labels(results: pd.DataFrame) -> pd.Series:
    """Method names, plus the hyperparameters whose values differ between rows (e.g. r=16) and
    that the name does not already show (a sweep's grid rows are named `lora(r=16)` by the spec)."""
    if "hparams" not in results:
        return results["method"]
    hparams = results["hparams"].map(lambda h: json.loads(h) if isinstance(h, str) else (h or {}))
    seen: dict[str, set] = {}
    for h in hparams:
        for key, value in h.items():
            seen.setdefault(key, set()).add(json.dumps(value))
    differing = [k for k, values in seen.items() if len(values) > 1]
    def label(method: str, h: dict) -> str:
        return row_label(method, {k: h[k] for k in differing if k in h and not re.search(rf"[(,] ?{re.escape(k)}=", method)})

    return pd.Series([label(m, h) for m, h in zip(results["method"], hparams)], index=results.index)


def _task_tests(values: pd.DataFrame, items: pd.DataFrame | None, baseline: str, with_aso: bool) -> pd.DataFrame:
    """Per (block, method, task): the comparison behind the mark (`stats.difference`), and as
    uncorrected detail Wilcoxon, ASO and each seed's own item test."""
    rows = []
    for method in values["method"].unique():
        if method == baseline:
            continue
        per_item = stats.per_item(items, method, baseline) if items is not None else None
        for _, r in stats.per_task(values, items, method, baseline, with_aso=with_aso).iterrows():
            key = {c: r[c] for c in BLOCK + ["task"]}
            seeds = pd.DataFrame()
            if per_item is not None:
                seeds = per_item[(per_item[BLOCK + ["task"]] == pd.Series(key)).all(axis=1)]
            rows.append(
                dict(key, method=method, result=r["result"], wilcoxon=r["wilcoxon"], aso=r["aso"],
                     per_seed="; ".join(f"seed {s.seed}: McNemar p={stats.format_p(s.mcnemar.p)}, Δ CI {s.ci}" for s in seeds.itertuples()))
            )
    return pd.DataFrame(rows, columns=BLOCK + ["task", "method", "result", "wilcoxon", "aso", "per_seed"])


def _correct(frames: list[pd.DataFrame], baseline: str, also: dict[tuple, stats.Difference], alpha: float) -> dict[tuple, stats.Significance]:
    """Holm–Bonferroni once over every distinct comparison of the report: the table's task cells,
    its Averages and `also` (the claims checked with it)."""
    family = dict(also)
    for frame in frames:
        for r in frame.itertuples():
            family[stats.family_key(r.backbone, r.regime, r.method, baseline, r.result.tasks)] = r.result
    keys = list(family)
    return dict(zip(keys, stats.holm([family[k].test for k in keys], alpha)))


def _with_tests(frame: pd.DataFrame, baseline: str, corrected: dict, alpha_each: float) -> pd.DataFrame:
    """The frame with its comparisons' numbers spread into columns, the corrected test and the MDE."""
    results = frame["result"]
    keys = [stats.family_key(r.backbone, r.regime, r.method, baseline, r.result.tasks) for r in frame.itertuples()]
    return frame.assign(
        diff=results.map(lambda d: d.diff), n_seeds=results.map(lambda d: d.n_seeds), ci=results.map(lambda d: d.ci),
        n_tasks=results.map(lambda d: len(d.tasks)), test=[corrected[k] for k in keys],
        mde=results.map(lambda d: stats.mde(d, alpha_each)),
    )


def _mark(diff: float, test: stats.Significance | None, alpha: float) -> str:
    if test is None or not test.significant(alpha):
        return ""
    return UP if diff > 0 else DOWN


def _cost(results: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Mean cost per row over its runs; throughput and memory as ratios to the baseline's."""
    runs = results.groupby(["method", "run_key"])[EFFICIENCY_COLUMNS].first()
    cost = runs.groupby("method").mean()
    for column in ("tokens_per_s", "peak_mem_mb"):
        base = cost[column].get(baseline, math.nan)
        cost[column] = cost[column] / base
    return cost


def comparison_table(
    results: pd.DataFrame,
    items: pd.DataFrame | None = None,
    baseline: str | None = None,
    alpha: float = ALPHA,
    with_aso: bool = False,
    also: dict[tuple, stats.Difference] | None = None,
) -> ComparisonTable:
    """Build every block of the table; significance against `baseline` (default LoRA).

    `with_aso` adds deepsig's ASO per task (seconds per comparison, so off by default). `also`:
    comparisons outside the table (a claims check's, keyed by `family_key`) that join its one
    Holm family, so a comparison shows one corrected p wherever it appears.
    """
    if results.empty:
        raise ValueError("the results frame is empty: no finished runs to compare")
    results = results.assign(method=row_labels(results))
    if items is not None:
        labels = results.drop_duplicates("run_key").set_index("run_key")["method"]
        items = stats.comparable_items(items.assign(method=items["run_key"].map(labels).fillna(items["method"])), results)
    methods = list(dict.fromkeys(results["method"]))
    baseline = resolve_baseline(methods, baseline)
    values = stats.seed_values(results)
    tasks = sorted(dict.fromkeys(results["task"]), key=lambda t: stats.GLUE_ORDER.index(t) if t in stats.GLUE_ORDER else -1)
    order = {name: i for i, name in enumerate([*methods, *tasks])}
    values = values.sort_values(["method", "task"], key=lambda column: column.map(order), kind="stable")
    task_tests = _task_tests(values, items, baseline, with_aso)
    average_tests = stats.across_tasks(values, baseline, items=items)
    corrected = _correct([task_tests, average_tests], baseline, also or {}, alpha)
    family_size = sum(not math.isnan(t.p) for t in corrected.values())
    alpha_each = alpha / max(family_size, 1)
    task_tests = _with_tests(task_tests, baseline, corrected, alpha_each)
    average_tests = _with_tests(average_tests, baseline, corrected, alpha_each)
    blocks = []
    for (backbone, regime), block_values in values.groupby(BLOCK, sort=False):
        block_results = results[(results["backbone"] == backbone) & (results["regime"] == regime)]
        blocks.append(_block(backbone, regime, block_values, block_results, task_tests, average_tests, baseline, alpha))
    one_seed = any(r.design == "items" for r in pd.concat([task_tests["result"], average_tests["result"]]))
    legend = [
        "Cells: mean ± std over the row's seeds with a finite value (n = those seeds); † = published mean (± its published std), not a run of ours. Points for fraction metrics.",
        f"Bold: best mean in the column. {UP}/{DOWN}: significantly above/below {baseline} at α = {alpha} after Holm–Bonferroni over the "
        f"{family_size} comparisons of this report (every task cell and Average, and any claims checked with it: one family).",
        "Test behind a mark: the row − the baseline on the seeds both have. With per-item scores, a t-test whose variance counts the "
        "seed-to-seed spread and the sampling of items (seeds and items both random, docs/statistics.md); with per-seed values only, "
        "the exact sign-flip over seeds (3 seeds cannot go below p = 0.25); published means: a paired t-test over per-task means.",
        "Average: each seed's mean over the block's tasks, on the seeds that have every task; its test uses the seeds both rows have complete.",
        f"MDE: the smallest difference the comparison detects with 80% power at α/m = {alpha_each:.2g}, from its item count and seed spread.",
        f"Params: trainable parameters (% of backbone). tok/s and mem: ratio to {baseline} (tok/s > 1 faster, mem < 1 leaner).",
    ]
    if one_seed:
        legend.insert(4, "One seed: the test is over its items only; run-to-run variance is untested.")
    return ComparisonTable(baseline, blocks, legend, average_tests, task_tests, corrected)


def _block(backbone, regime, values, results, task_tests, average_tests, baseline, alpha) -> Block:
    tasks = [t for t in dict.fromkeys(values["task"]) if t != REPORTED_AVERAGE]
    cells = []
    for method, rows in values.groupby("method", sort=False):
        for task, seeds in rows.groupby("task", sort=False):
            if task == REPORTED_AVERAGE and tasks:
                continue  # a published average next to its tasks: the table computes its own
            test = task_tests[(task_tests["backbone"] == backbone) & (task_tests["regime"] == regime)
                              & (task_tests["method"] == method) & (task_tests["task"] == task)]
            cells.append(_cell(method, task, seeds, test.iloc[0] if len(test) else None, alpha))
        if tasks:  # Average: each seed's mean over all tasks, then mean ± std over seeds
            finite = rows[rows["task"].isin(tasks) & np.isfinite(rows["value"].astype(float))]
            complete = finite.groupby("seed").filter(lambda s: s["task"].nunique() == len(tasks))
            per_seed = complete.groupby("seed", as_index=False)["value"].mean()
            if per_seed.empty:
                continue  # no seed of this method has every task: no average to show
            test = average_tests[(average_tests["backbone"] == backbone) & (average_tests["regime"] == regime)
                                 & (average_tests["method"] == method)]
            cells.append(_cell(method, AVERAGE, per_seed, test.iloc[0] if len(test) else None, alpha))
    cells = pd.DataFrame(cells)
    cells["best"] = cells["mean"] == cells.groupby("column")["mean"].transform("max")
    columns = tasks + [AVERAGE] if tasks else [REPORTED_AVERAGE]
    return Block(backbone, regime, columns, cells, _cost(results, baseline))


def _cell(method: str, column: str, seeds: pd.DataFrame, test, alpha: float) -> dict:
    published = bool((seeds["seed"] == PUBLISHED_SEED).all())
    reported_std = seeds["value_std"].iloc[0] if published and "value_std" in seeds else math.nan
    finite = seeds["value"][np.isfinite(seeds["value"].astype(float))]
    return dict(
        row=method,
        column=column,
        mean=finite.mean() if len(finite) else math.nan,
        std=reported_std if published else finite.std(ddof=1),
        n=len(finite),
        published=published,
        mark=_mark(test["diff"], test["test"], alpha) if test is not None else "",
        test=test["test"] if test is not None else None,
        mde=test["mde"] if test is not None else math.nan,
    )


# ---- rendering ------------------------------------------------------------------------------


def _cell_text(cell) -> str:
    spread = "" if np.isnan(cell["std"]) else f" ± {cell['std']:.2f}"
    n = "†" if cell["published"] else f" (n={cell['n']})"
    return f"{cell['mean']:.2f}{spread}{n}{cell['mark']}"


def _cost_text(cost: pd.Series) -> dict[str, str]:
    params = cost.get("trainable_params", math.nan)
    pct = cost.get("trainable_pct", math.nan)
    shown = "" if math.isnan(params) else f"{params / 1e6:.2f}M"
    if not math.isnan(pct):
        shown = f"{shown} ({pct:.2f}%)".strip()
    ratio = lambda x: "" if math.isnan(x) else f"{x:.2f}×"  # noqa: E731
    return {"Params": shown, "tok/s": ratio(cost.get("tokens_per_s", math.nan)), "mem": ratio(cost.get("peak_mem_mb", math.nan))}


def block_frame(block: Block) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The block as displayed, in plain text: a row per method, a cell per column, then its cost;
    and beside it which cells are the best of their column."""
    shown, best = [], []
    for row, cells in block.cells.groupby("row", sort=False):
        cells = cells.set_index("column")
        cost = block.cost.loc[row] if row in block.cost.index else pd.Series(dtype=float)
        shown.append({"Method": row, **{c: _cell_text(cells.loc[c]) if c in cells.index else "" for c in block.columns}, **_cost_text(cost)})
        best.append({"Method": False, **{c: bool(c in cells.index and cells.loc[c, "best"]) for c in block.columns}})
    frame = pd.DataFrame(shown)
    keep = (frame != "").any(axis=0)  # no empty cost columns for published tables
    return frame.loc[:, keep], pd.DataFrame(best).reindex(columns=frame.columns[keep], fill_value=False)


# LaTeX for the characters our cells and reports use; everything else passes as UTF-8.
TEX = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "{": r"\{", "}": r"\}", "^": r"\^{}", "~": r"\~{}",
       "\\": r"\textbackslash{}", "±": r"$\pm$", UP: r"$\uparrow$", DOWN: r"$\downarrow$", "†": r"$^\dagger$",
       "×": r"$\times$", "Δ": r"$\Delta$", "ε": r"$\varepsilon$", "≥": r"$\geq$", "·": r"$\cdot$"}


def _markup(text: str, bold: bool, fmt: str) -> str:
    """One cell's text in `fmt`, escaped, and bold where it is the best of its column."""
    if fmt == "tex":
        text = "".join(TEX.get(ch, ch) for ch in text)
        return rf"\textbf{{{text}}}" if bold else text
    if fmt == "html":
        text = html.escape(text)
        return f"<b>{text}</b>" if bold else text
    return f"**{text}**" if bold and text else text


def _frame_text(title: str, level: int, frame: pd.DataFrame, bold: pd.DataFrame | None = None, *, fmt: str) -> str:
    """A titled table in md, html or tex."""
    bold = bold if bold is not None else pd.DataFrame(False, index=frame.index, columns=frame.columns)
    cells = pd.DataFrame({c: [_markup(str(t), b, fmt) for t, b in zip(frame[c], bold[c])] for c in frame.columns})
    cells.columns = [_markup(str(c), False, fmt) for c in frame.columns]
    if fmt == "md":
        return f"{'#' * level} {title}\n\n{cells.to_markdown(index=False, disable_numparse=True)}\n"
    if fmt == "html":
        return f"<h{level}>{html.escape(title)}</h{level}>\n{cells.to_html(index=False, escape=False)}"
    caption = _markup(title, False, "tex")
    return f"% {title}\n" + cells.to_latex(index=False, escape=False, caption=caption)


def render(table: ComparisonTable, fmt: str) -> str:
    """The whole table in one format; csv is tidy (one row per cell) for further analysis."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        frames = [b.cells.assign(backbone=b.backbone, regime=b.regime) for b in table.blocks]
        tidy = pd.concat(frames, ignore_index=True)
        tidy["p"] = tidy["test"].map(lambda t: t.p if t is not None else math.nan)
        tidy["test_name"] = tidy["test"].map(lambda t: t.test if t is not None else "")
        tidy["correction"] = tidy["test"].map(lambda t: t.correction if t is not None else "")
        tidy["baseline"] = table.baseline
        return tidy.drop(columns="test").to_csv(index=False)
    parts = [_frame_text(f"{b.backbone} · {b.regime}", 3, *block_frame(b), fmt=fmt) for b in table.blocks]
    legend = table.legend
    if fmt == "md":
        parts.append("\n".join(f"- {line}" for line in legend))
    elif fmt == "html":
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in legend) + "</ul>")
    else:
        parts.append("\n".join(f"% {line}" for line in legend))
    return "\n".join(parts) + "\n"


# ---- the report -----------------------------------------------------------------------------


def _against_baseline(tests: pd.DataFrame, baseline: str, *by: str) -> dict[str, pd.Series]:
    """The leading columns of a detail section: where, which method (and task), the gain."""
    return {
        "Backbone · regime": tests["backbone"] + " · " + tests["regime"],
        "Method": tests["method"],
        **{name.capitalize(): tests[name] for name in by},
        f"Δ vs {baseline} (points)": tests["diff"].map(lambda d: f"{d:+.2f}"),
    }


def _detail_frame(table: ComparisonTable) -> pd.DataFrame:
    """Average gain of every method over the baseline, with its CI and the test behind it."""
    tests = table.average_tests
    return pd.DataFrame(
        {
            **_against_baseline(tests, table.baseline),
            "95% CI (uncorrected)": tests["ci"].map(lambda ci: f"[{ci.low:+.2f}, {ci.high:+.2f}] {ci.method}" if ci else "—"),
            "p": tests["test"].map(lambda t: stats.format_p(t.p)),
            "Test (n)": tests["test"].map(lambda t: f"{t.test} (n={t.n})" if t.n else t.test),
            "Correction": tests["test"].map(lambda t: t.correction),
            "MDE (points)": tests["mde"].map(_mde_text),
        }
    )


def _per_task_frame(table: ComparisonTable) -> pd.DataFrame:
    """Every per-task test against the baseline, the mark's test first."""
    tests = table.task_tests
    return pd.DataFrame(
        {
            **_against_baseline(tests, table.baseline, "task"),
            "Mark's test": tests["test"].map(str),
            "MDE (points)": tests["mde"].map(_mde_text),
            "Wilcoxon": tests["wilcoxon"].map(str),
            "ASO ε_min (A better when < 0.5)": tests["aso"].map(lambda e: "" if math.isnan(e) else f"{e:.2f}"),
            "Per seed (items)": tests["per_seed"],
        }
    ).pipe(lambda frame: frame.loc[:, (frame != "").any(axis=0)])


def _mde_text(mde: float) -> str:
    if math.isinf(mde):
        return "∞ (too few seeds to reach α)"
    return "—" if math.isnan(mde) else f"{mde:.2f}"


def _verdict_frame(verdicts: pd.DataFrame) -> pd.DataFrame:
    def text(column: str) -> pd.Series:  # an all-missing column reads back as float NaN
        return verdicts[column].fillna("").astype(str)

    return pd.DataFrame(
        {
            "Claim": text("statement"),
            "Measured on": text("backbone") + " · " + text("regime"),
            "Verdict": text("verdict"),
            "Evidence": text("why"),
            "Scale": (text("scale") + " " + text("note")).str.strip(),
        }
    )


def render_report(
    results: pd.DataFrame,
    items: pd.DataFrame | None = None,
    fmt: str = "md",
    baseline: str | None = None,
    claims=None,
    alpha: float = ALPHA,
    with_aso: bool = False,
) -> str:
    """The comparison report of a sweep: the table, its tests in detail, the claims' verdicts.

    `claims` is a claims file (path or `pipeline.claims.ClaimsFile`) or None. csv gives the
    tidy cells only (one row per table cell, with p, test and correction), for further analysis.
    """
    return render_reports(results, items, (fmt,), baseline, claims, alpha, with_aso)[fmt]


def render_reports(
    results: pd.DataFrame,
    items: pd.DataFrame | None = None,
    formats: tuple[str, ...] = FORMATS,
    baseline: str | None = None,
    claims=None,
    alpha: float = ALPHA,
    with_aso: bool = False,
) -> dict[str, str]:
    """`render_report` in several formats, the tests computed once: {format: text}."""
    claims_items = stats.comparable_items(items, results) if items is not None else None
    claims = claims_check.load(claims) if claims is not None and not isinstance(claims, claims_check.ClaimsFile) else claims
    also = claims_check.comparisons(results, claims, claims_items) if claims is not None else {}
    table = comparison_table(results, items, baseline, alpha, with_aso, also=also)
    verdicts = None
    if claims is not None:  # judged at the claims file's own α, on the report's one corrected family
        verdicts = claims_check.check(results, claims, items=claims_items, corrected=table.corrected)
    return {fmt: _report_text(table, verdicts, fmt) for fmt in formats}


def _report_text(table: ComparisonTable, verdicts: pd.DataFrame | None, fmt: str) -> str:
    if fmt == "csv":
        return render(table, fmt)
    parts = [render(table, fmt)]
    if table.average_tests is not None and len(table.average_tests):
        parts.append(_frame_text(f"Average gain over {table.baseline}", 2, _detail_frame(table), fmt=fmt))
    if table.task_tests is not None and len(table.task_tests):
        parts.append(_frame_text(f"Per-task tests against {table.baseline}", 2, _per_task_frame(table), fmt=fmt))
    if verdicts is not None and verdicts.empty:
        parts.append(_frame_text("Claims", 2, pd.DataFrame({"Claim": ["none judged: these results have no per-task values from seeds of their own"]}), fmt=fmt))
    elif verdicts is not None:
        parts.append(_frame_text("Claims", 2, _verdict_frame(verdicts), fmt=fmt))
    return "\n".join(parts)

"""Significance tests behind every peftbench comparison: pure functions on arrays and frames.

Every p-value leaves this module inside a `Significance` that names the test which produced it
and the multiple-comparison correction applied to it, so no table shows a bare number. The tests
are scipy's and statsmodels'; the one resampling scheme they cannot express (a bootstrap
stratified by task) is written here and says so.

Scale: values of fraction metrics (accuracy, F1, MCC, Pearson, ...) are turned into points
(×100) when they are selected from a results frame, so every difference returned here is in
the points a paper reports.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05
BLOCK = ["backbone", "regime"]
PAIR = BLOCK + ["task", "seed"]
# Metrics lm-eval and GLUE report as fractions; shown and compared in points.
FRACTION_METRICS = ("acc", "acc_norm", "mcc", "f1", "pearson", "spearman", "exact_match")
# Which metric stands for a task in tables when a run logged several.
PRIMARY_METRICS = ("acc", "mcc", "pearson", "f1", "acc_norm", "exact_match")
# Column order of GLUE tasks, as the LR-LoRA paper's Table 2 has them (other tasks keep their order, first).
GLUE_ORDER = ("sst2", "mrpc", "cola", "qnli", "rte", "stsb")
# A task of this name carries a reported average (published numbers), not a task of its own.
REPORTED_AVERAGE = "avg"
# The seed of a published row: a paper's mean over its own seeds, not one of our runs.
PUBLISHED_SEED = "published"


@dataclass(frozen=True)
class Significance:
    """A p-value with its test, what it was computed from, and how it was corrected."""

    test: str
    p: float
    statistic: float = math.nan
    n: int = 0  # paired observations the test saw: items, seeds or tasks
    correction: str = "none"

    def significant(self, alpha: float = ALPHA) -> bool:
        return bool(self.p < alpha)  # NaN (test undefined) is never significant

    def __str__(self) -> str:
        if math.isnan(self.p):
            return self.test
        return f"p={self.p:.3g} ({self.test}, n={self.n}; correction: {self.correction})"


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a difference, in points, with the resampling that made it."""

    low: float
    high: float
    level: float
    method: str

    def __str__(self) -> str:
        return f"[{self.low:+.2f}, {self.high:+.2f}] ({self.level:.0%} {self.method})"


NOT_TESTED = Significance("not tested (too few paired observations)", math.nan)
NOT_BINARY = Significance("not tested (McNemar needs 0/1 scores per item)", math.nan)


# ---- tests on paired arrays -------------------------------------------------------------


def mcnemar_exact(correct_a, correct_b) -> Significance:
    """Exact McNemar on two methods' 0/1 results over the same items (one task, one seed)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    result = mcnemar(table, exact=True)
    return Significance("exact McNemar", float(result.pvalue), float(result.statistic), n=len(a))


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_bootstrap_ci(scores_a, scores_b, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile CI of mean(a) − mean(b), resampling items with their pairing kept (scipy)."""
    result = stats.bootstrap(
        (np.asarray(scores_a, float), np.asarray(scores_b, float)),
        _mean_difference,
        paired=True,
        vectorized=True,
        confidence_level=level,
        n_resamples=n_resamples,
        method="percentile",
        batch=200,  # resamples at a time: bounds memory on 10k-item tasks
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return Interval(float(ci.low), float(ci.high), level, "paired bootstrap over items")


def paired_t(a, b, unit: str = "seeds") -> Significance:
    """Two-sided paired t-test (scipy `ttest_rel`); `unit` says what the pairs are."""
    if len(a) < 2:
        return NOT_TESTED
    name = f"paired t-test over {unit}"
    if np.array_equal(a, b):  # scipy says NaN (0/0); no difference at all is no evidence: p = 1
        return Significance(name, 1.0, 0.0, n=len(a))
    with warnings.catch_warnings():  # equal nonzero differences: scipy warns, gives t = ±inf, p = 0
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(a, b)
    return Significance(name, float(result.pvalue), float(result.statistic), n=len(a))


def wilcoxon_signed_rank(a, b, unit: str = "seeds") -> Significance:
    """Two-sided Wilcoxon signed-rank (scipy); with 3 pairs its smallest p is 0.25."""
    if len(a) < 2:
        return NOT_TESTED
    with warnings.catch_warnings():  # all differences zero: scipy warns and returns p = 1
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.wilcoxon(a, b)
    return Significance(f"Wilcoxon signed-rank over {unit}", float(result.pvalue), float(result.statistic), n=len(a))


def aso(scores_a, scores_b, seed: int = 0, n_bootstrap: int = 1000) -> float:
    """ε_min of Almost Stochastic Order (deepsig; Dror et al. 2019): A better than B when < 0.5.

    Not a p-value: it is how far A is from stochastically dominating B (0 = dominates,
    1 = dominated). deepsig is imported here because its import alone takes seconds.
    """
    from deepsig import aso as deepsig_aso

    with warnings.catch_warnings():  # identical samples divide by zero inside deepsig
        warnings.simplefilter("ignore", UserWarning)
        return float(
            deepsig_aso(list(scores_a), list(scores_b), seed=seed, num_bootstrap_iterations=n_bootstrap, show_progress=False, num_jobs=1)
        )


def holm(tests: Sequence[Significance], alpha: float = ALPHA) -> list[Significance]:
    """Holm–Bonferroni over one family (statsmodels `method="holm"`, not its Holm–Šidák default).

    Untestable entries (NaN) are not part of the family and stay NaN.
    """
    finite = [i for i, t in enumerate(tests) if not math.isnan(t.p)]
    out = list(tests)
    if not finite:
        return out
    _, adjusted, _, _ = multipletests([tests[i].p for i in finite], alpha=alpha, method="holm")
    label = f"Holm–Bonferroni over {len(finite)} comparison{'s' if len(finite) > 1 else ''}"
    for i, p in zip(finite, adjusted):
        out[i] = replace(tests[i], p=float(p), correction=label)
    return out


def stratified_bootstrap_ci(
    differences_by_task: Mapping[str, Sequence[float]], level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Interval:
    """Percentile CI of the average over tasks of the per-task mean paired difference.

    Written by hand: scipy's bootstrap has no strata. Each task's paired differences are resampled
    with replacement within that task, so every replicate keeps all tasks and weighs them equally,
    as the Average column of a table does. Drawing n items with replacement is drawing how often
    each distinct value comes up (multinomial), which keeps memory small: per-item differences of
    right/wrong scores take a handful of values even on a 10k-item task.
    """
    rng = np.random.default_rng(seed)
    task_means = []
    for diffs in differences_by_task.values():
        distinct, counts = np.unique(np.asarray(diffs, float), return_counts=True)
        drawn = rng.multinomial(counts.sum(), counts / counts.sum(), size=n_resamples)
        task_means.append(drawn @ distinct / counts.sum())
    replicates = np.mean(task_means, axis=0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(low), float(high), level, "bootstrap stratified by task")


# ---- from frames to paired arrays -----------------------------------------------------------


def task_metrics(results: pd.DataFrame) -> dict[str, str]:
    """The metric that stands for each task: the first of PRIMARY_METRICS it has, else any."""
    chosen = {}
    for task, metrics in results.groupby("task")["metric"].unique().items():
        ranked = [m for m in PRIMARY_METRICS if m in metrics]
        chosen[task] = ranked[0] if ranked else sorted(metrics)[0]
    return chosen


def comparable_items(items: pd.DataFrame, results: pd.DataFrame, score: str = "acc") -> pd.DataFrame:
    """The items of tasks whose table metric is the per-item `score`: a per-item 0/1 accuracy
    tests an accuracy column, not a Matthews correlation (CoLA) or a Pearson correlation (STS-B),
    whose columns are tested over seeds instead."""
    return items[items["task"].map(task_metrics(results)) == score]


def seed_values(results: pd.DataFrame, metrics: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One value per (backbone, regime, method, task, seed) in points, its task's metric only.

    A `value_std` column (numbers typed from a paper, one row per published mean) comes along.
    """
    metrics = dict(metrics or task_metrics(results))
    chosen = results[results["metric"] == results["task"].map(metrics)].copy()
    to_points = np.where(chosen["metric"].isin(FRACTION_METRICS), 100.0, 1.0)
    spread = ["value_std"] if "value_std" in chosen else []  # published rows: the paper's own std
    for column in ["value"] + spread:
        chosen[column] = chosen[column].astype(float) * to_points
    keys = BLOCK + ["method", "task", "seed"]
    return chosen.groupby(keys, as_index=False, dropna=False)[["value"] + spread].mean()


def paired_seeds(values: pd.DataFrame, method: str, baseline: str) -> pd.DataFrame:
    """Rows where both methods ran the same (backbone, regime, task, seed): value_a, value_b."""
    a = values[values["method"] == method].drop(columns="method")
    b = values[values["method"] == baseline].drop(columns="method")
    return a.merge(b, on=PAIR, suffixes=("_a", "_b"))


def paired_items(items: pd.DataFrame, method: str, baseline: str, score: str = "acc") -> pd.DataFrame:
    """Per-item scores of both methods on the same (backbone, regime, task, seed, doc_id)."""
    keys = PAIR + ["doc_id"]
    a = items.loc[items["method"] == method, keys + [score]]
    b = items.loc[items["method"] == baseline, keys + [score]]
    return a.merge(b, on=keys, suffixes=("_a", "_b"))


# ---- comparisons of one method against a baseline ----------------------------------------


def per_item(items: pd.DataFrame, method: str, baseline: str, score: str = "acc", seed: int = 0) -> pd.DataFrame:
    """Per (backbone, regime, task, seed): scores, exact McNemar (0/1 scores) and a paired bootstrap CI."""
    rows = []
    for key, pair in paired_items(items, method, baseline, score).groupby(PAIR):
        a, b = pair[f"{score}_a"].to_numpy(), pair[f"{score}_b"].to_numpy()
        rows.append(
            dict(
                zip(PAIR, key),
                n_items=len(pair),
                score_a=100 * a.mean(),
                score_b=100 * b.mean(),
                diff=100 * (a.mean() - b.mean()),
                ci=paired_bootstrap_ci(100 * a, 100 * b, seed=seed),
                mcnemar=mcnemar_exact(a, b) if np.isin(np.r_[a, b], (0, 1)).all() else NOT_BINARY,
            )
        )
    return pd.DataFrame(rows, columns=PAIR + ["n_items", "score_a", "score_b", "diff", "ci", "mcnemar"])


def per_task(values: pd.DataFrame, method: str, baseline: str, with_aso: bool = False, seed: int = 0) -> pd.DataFrame:
    """Per (backbone, regime, task), across seeds: mean difference, paired t, Wilcoxon, ASO ε_min."""
    cols = BLOCK + ["task", "n_seeds", "mean_a", "mean_b", "diff", "t_test", "wilcoxon", "aso"]
    rows = []
    for key, pair in paired_seeds(values, method, baseline).groupby(BLOCK + ["task"]):
        a, b = pair["value_a"].to_numpy(), pair["value_b"].to_numpy()
        rows.append(
            dict(
                zip(BLOCK + ["task"], key),
                n_seeds=len(pair),
                mean_a=a.mean(),
                mean_b=b.mean(),
                diff=a.mean() - b.mean(),
                t_test=paired_t(a, b),
                wilcoxon=wilcoxon_signed_rank(a, b),
                aso=aso(a, b, seed=seed) if with_aso and len(pair) > 1 else math.nan,
            )
        )
    return pd.DataFrame(rows, columns=cols)


@dataclass(frozen=True)
class AverageDifference:
    """method − baseline averaged over tasks (points), with its test and CI."""

    diff: float
    test: Significance
    ci: Interval | None
    tasks: tuple[str, ...]
    n_seeds: int
    baseline_mean: float  # the baseline's average over the same tasks, for relative gains


def average_difference(
    pairs: pd.DataFrame, item_pairs: pd.DataFrame | None = None, score: str = "acc", seed: int = 0
) -> AverageDifference:
    """One block's average gain over its tasks, tested as seed 001 does.

    `pairs` comes from `paired_seeds` for one backbone × regime. With two or more tasks the test is
    a paired t-test over the per-task means (seed 001, App. B.2); with one task it falls back to a
    paired t-test over seeds, and with one seed to exact McNemar on the items. The CI resamples
    items within tasks when every task has per-item results; without them it is the t-test's own
    interval (resampling two or three seeds per task would give intervals far too narrow). The
    item bootstrap reflects the sampling of test items, not the spread between training seeds.
    """
    by_task = pairs.groupby("task")[["value_a", "value_b"]].mean()
    tasks = tuple(by_task.index)
    diff = float((by_task["value_a"] - by_task["value_b"]).mean()) if tasks else math.nan
    n_seeds = int(pairs.groupby("task")["seed"].nunique().min()) if tasks else 0
    items = item_pairs if item_pairs is not None and set(item_pairs["task"]) >= set(tasks) and tasks else None
    if len(tasks) >= 2:
        a, b, unit = by_task["value_a"].to_numpy(), by_task["value_b"].to_numpy(), "per-task means"
    else:
        a, b, unit = pairs["value_a"].to_numpy(), pairs["value_b"].to_numpy(), "seeds"
    test = paired_t(a, b, unit=unit)
    if len(a) < 2 and items is not None:
        test = mcnemar_exact(items[f"{score}_a"], items[f"{score}_b"])
    if items is not None:
        per_doc = items.groupby(["task", "doc_id"])[[f"{score}_a", f"{score}_b"]].mean()
        per_doc = 100 * (per_doc[f"{score}_a"] - per_doc[f"{score}_b"])
        ci = stratified_bootstrap_ci({t: d.to_numpy() for t, d in per_doc.groupby(level="task")}, seed=seed)
    elif len(a) >= 2 and np.ptp(a - b) > 0:
        low, high = stats.ttest_rel(a, b).confidence_interval(0.95)
        ci = Interval(float(low), float(high), 0.95, f"t interval over {unit}")
    elif len(a) >= 2:  # every paired difference the same (identical runs): the interval is that point
        ci = Interval(diff, diff, 0.95, f"all {len(a)} paired differences equal")
    else:
        ci = None
    return AverageDifference(diff, test, ci, tasks, n_seeds, float(by_task["value_b"].mean()) if tasks else math.nan)


def across_tasks(
    values: pd.DataFrame,
    baseline: str,
    methods: Sequence[str] | None = None,
    items: pd.DataFrame | None = None,
    alpha: float = ALPHA,
    seed: int = 0,
) -> pd.DataFrame:
    """Every method against `baseline` in every block, Holm–Bonferroni over all those comparisons.

    The reported average of published numbers (task "avg") is not a task and is left out.
    """
    values = values[values["task"] != REPORTED_AVERAGE]
    methods = [m for m in (methods or values["method"].unique()) if m != baseline]
    rows = []
    for method in methods:
        pairs = paired_seeds(values, method, baseline)
        item_pairs = paired_items(items, method, baseline) if items is not None else None
        for key, block in pairs.groupby(BLOCK):
            block_items = None
            if item_pairs is not None:
                block_items = item_pairs[(item_pairs["backbone"] == key[0]) & (item_pairs["regime"] == key[1])]
            rows.append(dict(zip(BLOCK, key), method=method, result=average_difference(block, block_items, seed=seed)))
    corrected = holm([r["result"].test for r in rows], alpha)
    return pd.DataFrame(
        [
            dict(
                {k: r[k] for k in BLOCK + ["method"]},
                n_tasks=len(r["result"].tasks),
                n_seeds=r["result"].n_seeds,
                diff=r["result"].diff,
                ci=r["result"].ci,
                test=test,
            )
            for r, test in zip(rows, corrected)
        ],
        columns=BLOCK + ["method", "n_tasks", "n_seeds", "diff", "ci", "test"],
    )

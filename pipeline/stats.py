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
        return f"p={format_p(self.p)} ({self.test}, n={self.n}; correction: {self.correction})"


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
    d = np.asarray(a, float) - np.asarray(b, float)
    if np.ptp(d) == 0:  # no spread: the t statistic is 0/0 or ±inf, not evidence; the exact test is
        return sign_flip(d, unit)
    result = stats.ttest_rel(a, b)
    return Significance(f"paired t-test over {unit}", float(result.pvalue), float(result.statistic), n=len(a))


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


# ---- the comparison behind every mark ---------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """method − baseline in points over a set of tasks (one task: a table cell; all: its Average),
    each task weighing the same, with the test, CI and power of that one comparison.

    `se` and `df` are the standard error and degrees of freedom the test used; `mde` needs the
    α the report's family leaves to the comparison, so it is computed from them (`mde`).
    """

    diff: float
    test: Significance
    ci: Interval | None
    tasks: tuple[str, ...]
    n_seeds: int
    n_items: int  # items per seed, summed over tasks; 0 when only per-seed values were compared
    baseline_mean: float  # the baseline's mean over the same tasks and seeds, for relative gains
    se: float = math.nan
    df: float = math.nan
    design: str = "untestable"  # crossed | items | seeds | tasks | untestable


def family_key(backbone: str, regime: str, method: str, baseline: str, tasks) -> tuple:
    """What makes two comparisons one: a table's cell and a claim on the same rows and tasks share it."""
    return (backbone, regime, method, baseline, tuple(sorted(tasks)))


def untestable(why: str) -> Significance:
    return Significance(f"untestable ({why})", math.nan)


def format_p(p: float) -> str:
    """A p-value as printed: never 0 (a p below what floats hold is shown as below it)."""
    if math.isnan(p):
        return "—"
    return "<1e-300" if p < 1e-300 else f"{p:.3g}"


def sign_flip(differences, unit: str) -> Significance:
    """Exact two-sided sign-flip (paired permutation) test of mean difference 0 (scipy).

    Exact over all 2^n flips, so n constant differences give p = 2/2^n, never 0, and all-zero
    differences give p = 1."""
    d = np.asarray(differences, float)
    if len(d) < 2:
        return untestable(f"n={len(d)} {unit}")
    result = stats.permutation_test(
        (d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples", vectorized=True, n_resamples=np.inf if len(d) <= 16 else 65536,
        alternative="two-sided", rng=np.random.default_rng(0),
    )
    return Significance(f"exact sign-flip over {unit}", float(min(result.pvalue, 1.0)), float(d.mean()), n=len(d))


def _satterthwaite(terms: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(Σ c·v, its Satterthwaite df) for terms (coefficient c, variance estimate v, its df)."""
    total = sum(c * v for c, v, _ in terms)
    spread = sum((c * v) ** 2 / df for c, v, df in terms if c and df > 0)
    return total, (total**2 / spread if spread > 0 else math.inf)


def crossed_variance(matrices: Sequence[np.ndarray]) -> tuple[float, float]:
    """(variance, df) of the average over tasks of each task's mean paired difference, seeds and
    items both random.

    Each matrix is one task's per-item differences, seeds × items: a seed's run is shared by every
    task, a task's items by every seed. Written by hand (no well-kept library tests a crossed
    seeds × items design): the variance is the seeds' part, the variance of the per-seed means
    over S, plus each task's items' part, the variance of its per-item means over its I items
    (Clark 1973's two random factors), with Satterthwaite's (1946) df for their sum. Both parts
    hold the seed × item interaction once, so the sum counts it twice: conservative by that much,
    never negative, and no variance component is estimated as zero from two or three seeds. With
    one seed, run-to-run variance is not estimable and only the items' part is left.
    """
    w = 1.0 / len(matrices) ** 2
    terms = [(1, w * m.mean(axis=0).var(ddof=1) / m.shape[1], m.shape[1] - 1) for m in matrices if m.shape[1] > 1]
    n_seeds = matrices[0].shape[0]
    if n_seeds > 1:
        seed_means = np.mean([m.mean(axis=1) for m in matrices], axis=0)
        terms.append((1, seed_means.var(ddof=1) / n_seeds, n_seeds - 1))
    return _satterthwaite(terms)


def _t_result(diff: float, variance: float, df: float, name: str, n: int, n_items_total: int, interval: str) -> tuple[Significance, Interval]:
    """Two-sided t test and 95% t interval of `diff` with the given variance and df."""
    if variance <= 0:  # every paired difference identical: exact sign-flip over the items
        p = 1.0 if diff == 0 else min(1.0, 2.0 ** (1 - n_items_total))
        return Significance(name, p, math.inf if diff else 0.0, n=n), Interval(diff, diff, 0.95, "no spread at all")
    se = math.sqrt(variance)
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(0.975, df)) * se
    return Significance(name, p, t, n=n), Interval(diff - half, diff + half, 0.95, interval)


def difference(
    pairs: pd.DataFrame, item_pairs: pd.DataFrame | None = None, tasks: Sequence[str] | None = None, score: str = "acc"
) -> Difference:
    """method − baseline over `tasks` (default: every task in `pairs`), on the (seed, task) pairs
    where both have a finite value, using only seeds complete on every task.

    `pairs` is `paired_seeds` of one block, `item_pairs` `paired_items` of it. The test:
    - per-item scores for every task and seed, two or more seeds: a t test whose variance counts
      seed-to-seed and item sampling (`crossed_variance`);
    - one seed: the items alone (exact McNemar for one task of 0/1 scores), run-to-run variance untested;
    - per-seed values only: the exact sign-flip test over seeds;
    - published means (no seeds of ours): the paper's protocol, a paired t-test over per-task means.
    """
    pairs = pairs[np.isfinite(pairs["value_a"].astype(float)) & np.isfinite(pairs["value_b"].astype(float))]
    tasks = tuple(tasks) if tasks is not None else tuple(sorted(set(pairs["task"])))
    pairs = pairs[pairs["task"].isin(tasks)]
    if len(pairs) and (pairs["seed"] == PUBLISHED_SEED).all():
        return _published_difference(pairs, tasks)
    complete = [s for s, g in pairs.groupby("seed") if set(g["task"]) >= set(tasks)]
    pairs = pairs[pairs["seed"].isin(complete)]
    if not complete or not tasks:
        return Difference(math.nan, untestable("n=0 complete seeds"), None, tasks, 0, 0, math.nan)
    by_task = pairs.groupby("task")[["value_a", "value_b"]].mean()
    diff = float((by_task["value_a"] - by_task["value_b"]).mean())
    baseline_mean = float(by_task["value_b"].mean())
    matrices = _item_matrices(item_pairs, tasks, complete, score) if item_pairs is not None else None
    n_seeds = len(complete)
    if matrices is None:
        per_seed = pairs.groupby("seed").apply(lambda g: (g["value_a"] - g["value_b"]).mean(), include_groups=False).to_numpy()
        test = sign_flip(per_seed, "seeds")
        ci, se = None, math.nan
        if n_seeds >= 2 and np.ptp(per_seed) > 0:
            se = float(per_seed.std(ddof=1) / math.sqrt(n_seeds))
            low, high = stats.ttest_1samp(per_seed, 0).confidence_interval(0.95)
            ci = Interval(float(low), float(high), 0.95, "t interval over seeds")
        if n_seeds < 2:
            test = untestable(f"n={n_seeds} seed, no per-item scores")
        return Difference(diff, test, ci, tasks, n_seeds, 0, baseline_mean, se, n_seeds - 1, "seeds")
    n_items = sum(m.shape[1] for m in matrices)
    diff = float(np.mean([m.mean() for m in matrices]))
    variance, df = crossed_variance(matrices)
    if n_seeds == 1 and len(matrices) == 1 and np.isin(matrices[0], (-100, 0, 100)).all():
        a, b = _item_scores(item_pairs, tasks[0], complete[0], score)
        test, ci = mcnemar_exact(a, b), _t_result(diff, variance, df, "items", n_items, n_items, "t interval over items")[1]
        design = "items"
    elif n_seeds == 1:
        test, ci = _t_result(diff, variance, df, f"t-test over {n_items} items, one seed", n_items, n_items, "t interval over items")
        design = "items"
    else:
        name = f"t-test, {n_seeds} seeds × {n_items} items both random (Satterthwaite df {df:.3g})"
        test, ci = _t_result(diff, variance, df, name, n_seeds, n_items, "t interval, seeds and items random")
        design = "crossed"
    return Difference(diff, test, ci, tasks, n_seeds, n_items, baseline_mean, math.sqrt(max(variance, 0.0)), df, design)


def _published_difference(pairs: pd.DataFrame, tasks: tuple[str, ...]) -> Difference:
    """Published means, one per task: the tasks are the only replicates (the LR-LoRA paper's own
    protocol, App. B.2); equal differences on every task get the exact sign-flip p."""
    by_task = pairs.groupby("task")[["value_a", "value_b"]].mean()
    d = (by_task["value_a"] - by_task["value_b"]).to_numpy()
    diff, baseline_mean = float(d.mean()), float(by_task["value_b"].mean())
    if len(d) >= 2 and np.ptp(d) > 0:
        result = stats.ttest_1samp(d, 0)
        low, high = result.confidence_interval(0.95)
        test = Significance("paired t-test over per-task means", float(result.pvalue), float(result.statistic), n=len(d))
        ci = Interval(float(low), float(high), 0.95, "t interval over per-task means")
        return Difference(diff, test, ci, tasks, 1, 0, baseline_mean, float(d.std(ddof=1) / math.sqrt(len(d))), len(d) - 1, "tasks")
    test = sign_flip(d, "per-task means") if len(d) >= 2 else untestable("n=1 published mean")
    return Difference(diff, test, None, tasks, 1, 0, baseline_mean, design="tasks")


def _item_scores(item_pairs: pd.DataFrame, task: str, seed, score: str) -> tuple[np.ndarray, np.ndarray]:
    rows = item_pairs[(item_pairs["task"] == task) & (item_pairs["seed"] == seed)].sort_values("doc_id")
    return rows[f"{score}_a"].to_numpy(float), rows[f"{score}_b"].to_numpy(float)


def _item_matrices(item_pairs: pd.DataFrame, tasks, seeds, score: str) -> list[np.ndarray] | None:
    """Per task, seeds × items of 100·(a − b) on the items every seed scored; None unless every
    (task, seed) has finite per-item scores."""
    item_pairs = item_pairs[np.isfinite(item_pairs[f"{score}_a"].astype(float)) & np.isfinite(item_pairs[f"{score}_b"].astype(float))]
    matrices = []
    for task in tasks:
        rows = item_pairs[(item_pairs["task"] == task) & item_pairs["seed"].isin(seeds)]
        if rows.empty or set(rows["seed"]) != set(seeds):
            return None
        d = rows.assign(d=100 * (rows[f"{score}_a"].astype(float) - rows[f"{score}_b"].astype(float)))
        matrix = d.pivot_table(index="seed", columns="doc_id", values="d", aggfunc="mean").dropna(axis=1)
        if matrix.shape[1] == 0:
            return None
        matrices.append(matrix.to_numpy())
    return matrices


POWER = 0.8


def mde(result: Difference, alpha: float) -> float:
    """Minimal detectable effect (points) at 80% power and two-sided `alpha`, from the comparison's
    own standard error and df (Card et al. 2020). Seeds-only tests: the t approximation, or inf
    when n seeds cannot reach `alpha` at all (an exact sign-flip's smallest p is 2/2^n)."""
    if result.design == "seeds" and (result.n_seeds < 2 or 2.0 ** (1 - result.n_seeds) > alpha):
        return math.inf
    if math.isnan(result.se) or result.se == 0 or not result.df > 0:
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, result.df) + stats.t.ppf(POWER, result.df)) * result.se)


def per_task(
    values: pd.DataFrame, items: pd.DataFrame | None, method: str, baseline: str, with_aso: bool = False, seed: int = 0
) -> pd.DataFrame:
    """Per (backbone, regime, task): the mark's comparison (`difference`) and, beside it as detail,
    Wilcoxon over seeds and ASO ε_min (uncorrected)."""
    cols = BLOCK + ["task", "result", "wilcoxon", "aso"]
    item_pairs = paired_items(items, method, baseline) if items is not None else None
    rows = []
    for key, pair in paired_seeds(values, method, baseline).groupby(BLOCK + ["task"]):
        block_items = None
        if item_pairs is not None:
            block_items = item_pairs[(item_pairs[BLOCK + ["task"]] == pd.Series(dict(zip(BLOCK + ["task"], key)))).all(axis=1)]
        finite = pair[np.isfinite(pair["value_a"].astype(float)) & np.isfinite(pair["value_b"].astype(float))]
        a, b = finite["value_a"].to_numpy(float), finite["value_b"].to_numpy(float)
        rows.append(
            dict(
                zip(BLOCK + ["task"], key),
                result=difference(pair, block_items),
                wilcoxon=wilcoxon_signed_rank(a, b) if (finite["seed"] != PUBLISHED_SEED).all() else NOT_TESTED,
                aso=aso(a, b, seed=seed) if with_aso and len(finite) > 1 else math.nan,
            )
        )
    return pd.DataFrame(rows, columns=cols)


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


def across_tasks(values: pd.DataFrame, baseline: str, methods: Sequence[str] | None = None, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every method against `baseline` in every block, averaged over the block's tasks (uncorrected:
    the report's one family is corrected by its caller, `holm`).

    The reported average of published numbers (task "avg") is not a task and is left out.
    """
    values = values[values["task"] != REPORTED_AVERAGE]
    methods = [m for m in (methods or values["method"].unique()) if m != baseline]
    tasks = {key: tuple(dict.fromkeys(block["task"])) for key, block in values.groupby(BLOCK)}
    rows = []
    for method in methods:
        pairs = paired_seeds(values, method, baseline)
        item_pairs = paired_items(items, method, baseline) if items is not None else None
        for key, block in pairs.groupby(BLOCK):
            block_items = None
            if item_pairs is not None:
                block_items = item_pairs[(item_pairs["backbone"] == key[0]) & (item_pairs["regime"] == key[1])]
            rows.append(dict(zip(BLOCK, key), method=method, result=difference(block, block_items, tasks=tasks[key])))
    return pd.DataFrame(rows, columns=BLOCK + ["method", "result"])

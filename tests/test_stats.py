"""pipeline.stats against scipy/statsmodels on fixed arrays, and on frames whose answer is known."""

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from pipeline import stats
from tests.helpers import sweep_frames

A = np.array([71.2, 69.8, 70.5, 72.0, 70.1])
B = np.array([69.9, 69.5, 68.7, 70.4, 69.8])


def test_exact_mcnemar_matches_statsmodels_and_the_binomial_on_discordant_pairs():
    a = np.array([1] * 30 + [1] * 12 + [0] * 4 + [0] * 14)
    b = np.array([1] * 30 + [0] * 12 + [1] * 4 + [0] * 14)
    result = stats.mcnemar_exact(a, b)
    assert result.p == pytest.approx(mcnemar([[30, 12], [4, 14]], exact=True).pvalue)
    assert result.p == pytest.approx(scipy_stats.binomtest(4, 16, 0.5).pvalue)
    assert (result.test, result.n, result.correction) == ("exact McNemar", 60, "none")


def test_paired_t_and_wilcoxon_are_scipys():
    t = stats.paired_t(A, B)
    w = stats.wilcoxon_signed_rank(A, B)
    assert t.p == pytest.approx(scipy_stats.ttest_rel(A, B).pvalue)
    assert t.statistic == pytest.approx(scipy_stats.ttest_rel(A, B).statistic)
    assert w.p == pytest.approx(scipy_stats.wilcoxon(A, B).pvalue)
    assert "paired t-test" in t.test and "Wilcoxon" in w.test


def test_one_pair_is_not_tested_rather_than_given_a_p_value():
    assert math.isnan(stats.paired_t([1.0], [0.0]).p)
    assert not stats.paired_t([1.0], [0.0]).significant()


def test_holm_is_holm_bonferroni_not_the_statsmodels_default_holm_sidak():
    tests = [stats.Significance("paired t-test", p) for p in (0.01, 0.04, 0.03)]
    adjusted = [t.p for t in stats.holm(tests)]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])  # by hand: 3·0.01, max(2·0.03, 1·0.04)
    assert adjusted == pytest.approx(multipletests([0.01, 0.04, 0.03], method="holm")[1])
    assert adjusted != pytest.approx(multipletests([0.01, 0.04, 0.03])[1])  # default: Holm–Šidák
    assert all(t.correction == "Holm–Bonferroni over 3 comparisons" for t in stats.holm(tests))


def test_holm_leaves_untestable_comparisons_out_of_the_family():
    tests = [stats.Significance("t", 0.02), stats.NOT_TESTED]
    adjusted = stats.holm(tests)
    assert adjusted[0].p == pytest.approx(0.02) and adjusted[0].correction.endswith("over 1 comparison")
    assert math.isnan(adjusted[1].p)


def test_paired_bootstrap_ci_agrees_with_the_normal_approximation_on_many_items():
    rng = np.random.default_rng(1)
    a = (rng.random(4000) < 0.62).astype(float) * 100
    b = np.where(rng.random(4000) < 0.8, a, 100 - a)
    ci = stats.paired_bootstrap_ci(a, b)
    d = a - b
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert ci.low == pytest.approx(d.mean() - half, abs=0.4)
    assert ci.high == pytest.approx(d.mean() + half, abs=0.4)


def test_aso_sees_which_method_dominates():
    better, worse = [0.71, 0.72, 0.70, 0.73, 0.72], [0.60, 0.62, 0.61, 0.59, 0.60]
    assert stats.aso(better, worse, n_bootstrap=100) < 0.2
    assert stats.aso(worse, better, n_bootstrap=100) > 0.8


def test_two_names_for_one_method_show_no_difference():
    results, items = sweep_frames({"lora": 0.6}, same_as={"lora_copy": "lora"})
    values = stats.seed_values(results)
    summary = stats.across_tasks(values, baseline="lora", items=items)
    assert [r.diff for r in summary["result"]] == [0.0]
    assert summary["result"][0].test.p == 1.0
    per_item = stats.per_item(items, "lora_copy", "lora")
    assert (per_item["mcnemar"].map(lambda t: t.p) == 1.0).all()
    assert not stats.per_task(values, items, "lora_copy", "lora")["result"].map(lambda r: r.test.significant()).any()


def test_a_clearly_better_method_is_significantly_better_in_the_right_direction():
    results, items = sweep_frames({"lora": 0.55, "lr_lora": 0.7, "ia3": 0.56})
    values = stats.seed_values(results)
    summary = stats.across_tasks(values, baseline="lora", items=items).set_index("method")["result"]
    better = summary.loc["lr_lora"]
    assert 8 < better.diff < 25 and better.ci.low > 0
    assert better.test.significant() and "3 seeds × 1600 items both random" in better.test.test
    ia3 = summary.loc["ia3"]
    assert ia3.ci.low < 0 < ia3.ci.high or ia3.diff < 3
    per_item = stats.per_item(items, "lr_lora", "lora")
    assert (per_item["diff"] > 0).all() and per_item["mcnemar"].map(lambda t: t.significant()).mean() > 0.8


def test_fraction_metrics_are_compared_in_points():
    results, _ = sweep_frames({"lora": 0.6}, tasks=("arc_easy",), seeds=(1,))
    values = stats.seed_values(results)
    assert values["value"].iloc[0] == pytest.approx(100 * results["value"].iloc[0])


def test_each_task_is_compared_on_its_own_metric():
    results, _ = sweep_frames({"lora": 0.6}, tasks=("arc_easy", "cola"), seeds=(1,), n_items=20)
    norm = results.assign(metric="acc_norm", value=0.99)
    results.loc[results["task"] == "cola", "metric"] = "mcc"
    frame = pd.concat([results, norm])
    assert stats.task_metrics(frame) == {"arc_easy": "acc", "cola": "mcc"}
    assert (stats.seed_values(frame)["value"] < 99).all()  # acc_norm stood aside


def test_mcnemar_is_only_run_on_right_or_wrong_items():
    _, items = sweep_frames({"lora": 0.6, "lr_lora": 0.7}, tasks=("squad",), seeds=(1,), n_items=50)
    items["f1"] = items["acc"] * 0.8  # a graded per-item score
    graded = stats.per_item(items, "lr_lora", "lora", score="f1")
    assert graded["mcnemar"].item() is stats.NOT_BINARY
    assert graded["diff"].item() == pytest.approx(0.8 * stats.per_item(items, "lr_lora", "lora")["diff"].item())


# ---- the comparison behind every mark: known answers and the degenerate cases ----------------


def seed_pairs(a: dict[str, list[float]], b: dict[str, list[float]], seeds=(1, 2, 3)) -> pd.DataFrame:
    """paired_seeds rows by hand: task -> per-seed values of the method (a) and the baseline (b)."""
    rows = [dict(backbone="m", regime="r", task=task, seed=s, value_a=va, value_b=vb)
            for task in a for s, va, vb in zip(seeds, a[task], b[task])]
    return pd.DataFrame(rows)


def by_hand_sign_flip(d) -> float:
    """Two-sided exact sign-flip p by enumerating every flip."""
    d = np.asarray(d, float)
    flips = np.array(np.meshgrid(*[[1, -1]] * len(d))).reshape(len(d), -1).T
    means = (flips * d).mean(axis=1)
    return min(1.0, 2 * min(np.mean(means >= d.mean() - 1e-12), np.mean(means <= d.mean() + 1e-12)))


def test_constant_gains_over_seeds_get_the_exact_sign_flip_p_not_p_zero():
    pairs = seed_pairs({"arc_easy": [44, 47, 41], "piqa": [63, 61, 66]}, {"arc_easy": [41, 44, 38], "piqa": [60, 58, 63]})
    result = stats.difference(pairs)
    assert result.diff == pytest.approx(3.0)
    assert result.test.p == pytest.approx(0.25) and "sign-flip over seeds" in result.test.test  # 2 / 2^3
    assert not result.test.significant() and "p=0.25" in str(result.test)
    assert stats.mde(result, 0.05) == math.inf  # three seeds cannot reach α = 0.05 at all
    one_task = stats.difference(pairs[pairs["task"] == "piqa"])
    assert one_task.test.p == pytest.approx(0.25)
    assert stats.paired_t([44, 47, 41], [41, 44, 38]).p == pytest.approx(0.25)  # no t-test on zero spread


def test_sign_flip_is_exact_against_enumeration():
    d = np.array([1.5, -0.3, 2.2, 0.9, 1.1, 3.0])
    assert stats.sign_flip(d, "seeds").p == pytest.approx(by_hand_sign_flip(d))
    assert stats.sign_flip([0.0, 0.0, 0.0], "seeds").p == 1.0
    assert math.isnan(stats.sign_flip([2.0], "seeds").p) and "untestable (n=1" in stats.sign_flip([2.0], "seeds").test


def test_a_nan_seed_is_not_counted_and_the_average_uses_the_same_pairs():
    pairs = seed_pairs({"arc_easy": [58, math.nan, 65]}, {"arc_easy": [60, 62, 61]})
    result = stats.difference(pairs)
    assert result.n_seeds == 2 and result.diff == pytest.approx(((58 - 60) + (65 - 61)) / 2)
    assert result.baseline_mean == pytest.approx((60 + 61) / 2)  # LoRA's seed 2 has no partner: left out
    assert result.test.p == pytest.approx(by_hand_sign_flip([-2, 4])) == 1.0
    two_tasks = seed_pairs({"arc_easy": [58, math.nan, 65], "piqa": [70, 71, 72]}, {"arc_easy": [60, 62, 61], "piqa": [69, 69, 69]})
    average = stats.difference(two_tasks)  # seed 2 lacks a task: the average uses seeds 1 and 3 only
    assert average.n_seeds == 2 and average.diff == pytest.approx(np.mean([(-2 + 4) / 2, (1 + 3) / 2]))


def test_one_seed_without_items_is_untestable_and_says_so():
    result = stats.difference(seed_pairs({"cola": [60.0]}, {"cola": [50.0]}, seeds=(1,)))
    assert math.isnan(result.test.p) and result.test.test == "untestable (n=1 seed, no per-item scores)"
    assert stats.format_p(result.test.p) == "—" and stats.format_p(0.0) == "<1e-300" and stats.format_p(1e-320) == "<1e-300"


def crossed_frames(matrix: np.ndarray, task: str = "t") -> tuple[pd.DataFrame, pd.DataFrame]:
    """seed and item pairs of one task whose per-item differences (a − b, 0/1 scores) are `matrix`/100."""
    items = []
    for s, row in enumerate(matrix):
        for i, d in enumerate(row):
            a, b = (1, 0) if d > 0 else (0, 1) if d < 0 else (1, 1)
            items.append(dict(backbone="m", regime="r", task=task, seed=s, doc_id=i, acc_a=a, acc_b=b))
    items = pd.DataFrame(items)
    seeds = items.groupby(["backbone", "regime", "task", "seed"], as_index=False)[["acc_a", "acc_b"]].mean()
    seeds = seeds.assign(value_a=100 * seeds["acc_a"], value_b=100 * seeds["acc_b"]).drop(columns=["acc_a", "acc_b"])
    return seeds, items


def test_crossed_variance_is_the_seed_and_item_mean_squares_statsmodels_computes():
    rng = np.random.default_rng(3)
    m = 5.0 + rng.normal(0, 4, (3, 1)) + rng.normal(0, 20, (1, 40)) + rng.normal(0, 30, (3, 40))
    frame = pd.DataFrame([dict(seed=s, item=i, d=m[s, i]) for s in range(3) for i in range(40)])
    table = sm.stats.anova_lm(smf.ols("d ~ C(seed) + C(item)", frame).fit())
    ms_seed, ms_item = table.loc["C(seed)", "mean_sq"], table.loc["C(item)", "mean_sq"]
    variance, df = stats.crossed_variance([m])
    assert variance == pytest.approx((ms_seed + ms_item) / (3 * 40))
    assert df == pytest.approx((ms_seed + ms_item) ** 2 / (ms_seed**2 / 2 + ms_item**2 / 39))
    one_seed, one_df = stats.crossed_variance([m[:1]])
    assert one_seed == pytest.approx(m[0].var(ddof=1) / 40) and one_df == pytest.approx(39)


def test_tasks_weigh_the_same_whatever_their_item_count():
    rng = np.random.default_rng(4)
    big = np.where(rng.random((2, 2000)) < 0.1, 100.0, 0.0)  # +10 points on many items
    small = np.where(rng.random((2, 50)) < 0.5, 100.0, 0.0)  # +50 points on few items
    seeds_big, items_big = crossed_frames(big, "big")
    seeds_small, items_small = crossed_frames(small, "small")
    result = stats.difference(pd.concat([seeds_big, seeds_small]), pd.concat([items_big, items_small]))
    assert result.diff == pytest.approx((big.mean() + small.mean()) / 2)
    assert result.n_items == 2050 and result.design == "crossed"


def test_the_item_evidence_counts_when_seeds_agree_and_the_ci_says_what_the_test_says():
    # Two seeds, the method about 11 points below on 200 items in each (as zero-shot vs LoRA on
    # ARC-Easy): the items it loses are mostly the same in both seeds, a few differ by seed.
    rng = np.random.default_rng(5)
    shared = np.where(rng.random(200) < 0.16, -100.0, np.where(rng.random(200) < 0.05, 100.0, 0.0))
    m = np.where(rng.random((2, 200)) < 0.05, 0.0, shared)
    seeds, items = crossed_frames(m)
    result = stats.difference(seeds, items)
    assert result.diff < -5 and result.test.significant(0.01) and result.ci.high < 0
    assert (result.ci.low < 0 < result.ci.high) == (not result.test.significant(0.05))
    single = stats.difference(seeds[seeds["seed"] == 0], items[items["seed"] == 0])
    assert single.test.test == "exact McNemar" and single.design == "items"
    assert single.test.p == pytest.approx(stats.mcnemar_exact(items[items["seed"] == 0]["acc_a"], items[items["seed"] == 0]["acc_b"]).p)


def test_no_false_significance_beyond_alpha_when_seeds_and_items_both_vary():
    """Under no difference, with seed-to-seed spread as large as the item noise allows, the
    crossed test rejects about α of the time (three seeds, 200 items, 400 simulated tables)."""
    rng = np.random.default_rng(6)
    rejected = 0
    for _ in range(400):
        m = rng.normal(0, 5, (3, 1)) + rng.normal(0, 20, (1, 200)) + rng.normal(0, 30, (3, 200))
        variance, df = stats.crossed_variance([m])
        rejected += 2 * scipy_stats.t.sf(abs(m.mean()) / math.sqrt(variance), df) < 0.05
    assert rejected / 400 < 0.09
    items_only = sum(  # the items-only test the table used to mark with: it ignores the seeds' spread
        scipy_stats.ttest_1samp((rng.normal(0, 5, (3, 1)) + rng.normal(0, 30, (3, 200))).mean(axis=0), 0).pvalue < 0.05
        for _ in range(200)
    )
    assert items_only / 200 > 0.2


def test_mde_is_the_power_formula_on_the_tests_own_standard_error():
    result = stats.Difference(1.0, stats.NOT_TESTED, None, ("t",), 3, 600, 50.0, se=2.0, df=30.0, design="crossed")
    expected = (scipy_stats.t.ppf(1 - 0.01 / 2, 30) + scipy_stats.t.ppf(0.8, 30)) * 2.0
    assert stats.mde(result, 0.01) == pytest.approx(expected)
    six_seeds = stats.Difference(1.0, stats.NOT_TESTED, None, ("t",), 6, 0, 50.0, se=1.0, df=5.0, design="seeds")
    assert math.isfinite(stats.mde(six_seeds, 0.05)) and stats.mde(six_seeds, 0.01) == math.inf  # 2/64 > 0.01


def test_a_p_below_what_floats_hold_is_never_printed_as_zero():
    assert str(stats.Significance("exact McNemar", 0.0, n=2000)).startswith("p=<1e-300 (exact McNemar")

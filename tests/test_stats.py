"""pipeline.stats against scipy/statsmodels on fixed arrays, and on frames whose answer is known."""

import math

import numpy as np
import pandas as pd
import pytest
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


def test_stratified_bootstrap_weighs_tasks_equally_not_items():
    rng = np.random.default_rng(2)
    big = rng.normal(1.0, 1.0, 5000)  # many items, small gain
    small = rng.normal(5.0, 1.0, 50)  # few items, large gain
    ci = stats.stratified_bootstrap_ci({"big": big, "small": small})
    macro = (big.mean() + small.mean()) / 2
    assert ci.low < macro < ci.high
    assert ci.high - ci.low < 1.0
    assert not ci.low < np.concatenate([big, small]).mean() < ci.high  # the pooled mean is ~1.2
    constant = stats.stratified_bootstrap_ci({"t1": [2.0] * 10, "t2": [4.0] * 3})
    assert (constant.low, constant.high) == (3.0, 3.0)


def test_aso_sees_which_method_dominates():
    better, worse = [0.71, 0.72, 0.70, 0.73, 0.72], [0.60, 0.62, 0.61, 0.59, 0.60]
    assert stats.aso(better, worse, n_bootstrap=100) < 0.2
    assert stats.aso(worse, better, n_bootstrap=100) > 0.8


def test_two_names_for_one_method_show_no_difference():
    results, items = sweep_frames({"lora": 0.6}, same_as={"lora_copy": "lora"})
    values = stats.seed_values(results)
    summary = stats.across_tasks(values, baseline="lora", items=items)
    assert summary["diff"].tolist() == [0.0]
    assert summary["test"][0].p == 1.0 and summary["test"][0].correction == "Holm–Bonferroni over 1 comparison"
    per_item = stats.per_item(items, "lora_copy", "lora")
    assert (per_item["mcnemar"].map(lambda t: t.p) == 1.0).all()
    assert not stats.per_task(values, "lora_copy", "lora")["t_test"].map(lambda t: t.significant()).any()


def test_a_clearly_better_method_is_significantly_better_in_the_right_direction():
    results, items = sweep_frames({"lora": 0.55, "lr_lora": 0.7, "ia3": 0.56})
    values = stats.seed_values(results)
    summary = stats.across_tasks(values, baseline="lora", items=items).set_index("method")
    better = summary.loc["lr_lora"]
    assert 8 < better["diff"] < 25 and better["ci"].low > 0
    assert better["test"].significant() and "per-task means" in better["test"].test
    assert better["test"].correction == "Holm–Bonferroni over 2 comparisons"
    assert summary.loc["ia3", "ci"].low < 0 < summary.loc["ia3", "ci"].high or summary.loc["ia3", "diff"] < 3
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

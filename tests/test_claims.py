"""Claims verdicts on sweeps whose answer is known, and on the papers' own tables."""

from pathlib import Path

import pandas as pd
import pytest

from pipeline import claims
from pipeline.published import load_results_csv
from tests.helpers import sweep_frames

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "claims"
CLAIMS_DATA = Path(__file__).resolve().parents[2] / "shared" / "claims"
COMMONSENSE = ("boolq", "piqa", "arc_easy", "openbookqa")
LR_LORA = claims.load(CONFIGS / "lr_lora.yaml")
LORA_SHIFT = claims.load(CONFIGS / "lora_shift.yaml")


def only(claims_file: claims.ClaimsFile, claim_id: str) -> claims.ClaimsFile:
    return claims_file.model_copy(update={"claims": [c for c in claims_file.claims if c.id == claim_id]})


QWEN_15K = only(LR_LORA, "lr_lora.table1.qwen2-0.5b.15k")  # published +3.54 points


def verdict_of(results, claims_file, items=None):
    verdicts = claims.check(results, claims_file, items=items)
    assert len(verdicts) == 1
    return verdicts.iloc[0]


def test_a_large_significant_gain_supports_the_claim_and_says_the_scale_differs():
    results, items = sweep_frames({"lora": 0.55, "lr_lora": 0.70}, tasks=COMMONSENSE)
    row = verdict_of(results, QWEN_15K, items)
    assert row["verdict"] == "supported"
    assert row["measured"] > 3.54 and row["p"] < 0.05 and row["test"] == "paired t-test over per-task means"
    assert "claimed on qwen2-0.5b" in row["scale"] and "measured on smollm2-135m" in row["scale"]
    assert "4 of the claim's 8 task(s)" in row["scale"]
    sized = verdict_of(results.assign(n_train=1024), QWEN_15K, items)
    assert "regime cs-1k (1,024 training examples)" in sized["scale"] and "15,000 training examples" in sized["scale"]


def test_the_same_method_under_two_names_refutes_a_claimed_gain():
    results, items = sweep_frames({"lora": 0.6}, tasks=COMMONSENSE, same_as={"lr_lora": "lora"})
    for with_items in (items, None):
        row = verdict_of(results, QWEN_15K, with_items)
        assert row["verdict"] == "refuted" and row["measured"] == 0
        assert "size smaller than claimed" in row["why"] and "direction not significant" in row["why"]


def test_a_real_but_smaller_gain_is_right_in_direction_and_refuted_in_size():
    results, items = sweep_frames({"lora": 0.55, "lr_lora": 0.57}, tasks=COMMONSENSE, n_items=2000)
    row = verdict_of(results, QWEN_15K, items)
    assert row["verdict"] == "refuted"
    assert "direction positive" in row["why"] and 0 < row["ci_low"] < row["ci_high"] < 3.54


def test_too_little_data_is_inconclusive():
    results, items = sweep_frames({"lora": 0.55, "lr_lora": 0.58}, tasks=COMMONSENSE, n_items=60, seeds=(1, 2))
    row = verdict_of(results, QWEN_15K, items)
    assert row["verdict"] == "inconclusive"
    assert row["ci_low"] < 0 < 3.54 < row["ci_high"]


def test_claims_on_methods_or_tasks_that_were_not_run_are_inconclusive_and_say_why():
    results, _ = sweep_frames({"lora": 0.55, "ia3": 0.6}, tasks=COMMONSENSE, n_items=50, seeds=(1,))
    assert "not measured: methods lr_lora / lora" in verdict_of(results, QWEN_15K)["why"]
    results, _ = sweep_frames({"lora": 0.55, "lr_lora": 0.6}, tasks=COMMONSENSE, n_items=50, seeds=(1,))
    row = verdict_of(results, only(LR_LORA, "lr_lora.table2.roberta-base"))
    assert row["verdict"] == "inconclusive" and "not measured: tasks sst2" in row["why"]


def test_fifteen_to_twenty_five_percent_is_a_relative_gain():
    big, items = sweep_frames({"lora": 0.45, "lora_shift": 0.60}, tasks=("sst2", "mnli", "qqp"), n_items=1000)
    claim = only(LORA_SHIFT, "lora_shift.text.15-25pct.r8")
    row = verdict_of(big, claim, items)
    assert 0.15 <= row["measured"] <= 0.25 and row["verdict"] == "supported"
    small, items = sweep_frames({"lora": 0.60, "lora_shift": 0.61}, tasks=("sst2", "mnli", "qqp"), n_items=1000)
    row = verdict_of(small, claim, items)
    assert row["verdict"] == "refuted" and row["ci_high"] < 0.15
    assert "not 15-25%" in row["note"]
    huge, items = sweep_frames({"lora": 0.40, "lora_shift": 0.60}, tasks=("sst2", "mnli", "qqp"), n_items=1000)
    row = verdict_of(huge, claim, items)  # a range is a claim too: well above it is not "15-25%"
    assert row["verdict"] == "refuted" and row["ci_low"] > 0.25 and "larger than claimed" in row["why"]


def test_holm_runs_over_distinct_comparisons_not_over_claims():
    results, items = sweep_frames({"lora": 0.55, "lr_lora": 0.65}, tasks=COMMONSENSE, n_items=100, seeds=(1, 2))
    other, other_items = sweep_frames({"lora": 0.55, "lr_lora": 0.65}, tasks=COMMONSENSE, n_items=100, seeds=(1, 2), regime="cs-8k")
    verdicts = claims.check(pd.concat([results, other]), LR_LORA, items=pd.concat([items, other_items]))
    tested = verdicts.dropna(subset=["p"])
    # seven commonsense claims, each on two regimes, share two comparisons
    assert len(tested) == 14 and set(tested["correction"]) == {"Holm–Bonferroni over 2 comparisons"}


def test_the_papers_own_per_task_table_supports_its_qwen2_claims():
    """Seed 001 says every Table 1 gain is significant after Holm; its Table 6 lets us check Qwen2."""
    if not CLAIMS_DATA.is_dir():
        pytest.skip(f"published tables not found at {CLAIMS_DATA}")
    table6 = load_results_csv(CLAIMS_DATA / "lr_lora_table6_qwen2_per_task.csv")
    table6["method"] = table6["method"].replace({"lr_lora-32": "lr_lora", "lora-32": "lora"})
    verdicts = claims.check(table6, LR_LORA).set_index(["claim", "regime"])
    for regime in ("15k", "170k"):
        row = verdicts.loc[(f"lr_lora.table1.qwen2-0.5b.{regime}", regime)]
        assert row["verdict"] == "supported" and row["p"] < 0.05 and "t interval" in row["why"]
    assert verdicts.loc[("lr_lora.table1.qwen2-0.5b.15k", "15k"), "measured"] == pytest.approx(3.54, abs=0.02)


def test_a_claim_without_one_size_or_a_scale_is_rejected_when_the_file_is_read(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "paper: x\nclaims:\n  - {id: c, statement: s, method: [a], baseline: [b], scale: {backbone: m}}\n"
    )
    with pytest.raises(ValueError, match="claim c: give exactly one of `published`, `gain` or `relative_gain`"):
        claims.load(path)
    path.write_text("paper: x\nclaims:\n  - {id: c, statement: s, method: [a], baseline: [b], gain: [1, 2]}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: claims.0.scale: Field required"):
        claims.load(path)

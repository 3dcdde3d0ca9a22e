"""The nightly gate: a planted regression exits 1 through the real CLI (local Ray, SQLite
MLflow, DeepSpeed), an identical rerun exits 0, a throughput blip inside the noise band passes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from pipeline import nightly, spec, track
from pipeline.__main__ import main
from tests.helpers import local_ray_instance

pytestmark = pytest.mark.slow  # real Ray, DeepSpeed engines or processes

# tiny-llama is random: untrained, it prefers one BoolQ answer for every question. A few steps
# at a large rate teach it the label prior, so trained and untrained LoRA disagree on most items.
# The plant is LoRA at a learning rate of 1e-9: it runs the same steps and learns nothing.
# Measured: untrained 32.8% (always "no"), trained 67.2% (always "yes") on the 64 items, so all
# 64 are discordant pairs and McNemar's p is far below 0.05 with one seed.
NIGHTLY = """
name: nightly-tiny
backbones: [tiny-llama]
methods:
  - name: none
  - name: lora
    hparams: {{r: 4}}
    train: {{lr: {lr}}}
tasks: [boolq]
regimes:
  - name: bq-64
    tasks: [boolq]
    n_examples: 64
seeds: [1]
train: {{lr: 1.0e-2, micro_batch_size: 8, max_steps: 8, max_seq_len: 128, warmup_ratio: 0.0}}
eval: {{limit: 64, batch_size: 16}}
"""


def _night(args: list[str]) -> int:
    """One `pipeline nightly` as cron runs it: its own Ray job, so its own fresh workers. In one
    shared Ray a night's cells would run in workers an earlier night warmed, whose resident set
    has grown (identical lora cells in one reused worker peaked at 993 to 1090 MB), which no real
    night sees."""
    with local_ray_instance():
        return main(args)


def test_planted_regression_fails_identical_rerun_passes(write_spec, tracking_uri, capsys, monkeypatch):
    # Two helpers share this machine's 2 cores, so tokens/s swings far more than on a runner of
    # its own: the CLI test widens the throughput floor; the band itself is tested below.
    monkeypatch.setitem(nightly.FLOOR, "tokens_per_s", 0.9)
    good = write_spec(NIGHTLY.format(lr="1.0e-2"), "good.yaml")
    bad = write_spec(NIGHTLY.format(lr="1.0e-9"), "bad.yaml")
    cli = ["nightly", "--tracking-uri", tracking_uri]

    assert _night(cli + ["--spec", str(good)]) == 0  # no earlier night: the baseline
    baseline = capsys.readouterr().out
    assert "this night is the baseline" in baseline and "## Tonight" in baseline  # what the baseline measured
    assert [line.split("|")[3:6] for line in baseline.splitlines() if "| boolq |" in line] == [
        [" lora ", " boolq ", " acc "], [" none ", " boolq ", " acc "]]
    assert _night(cli + ["--spec", str(good)]) == 0  # the same suite again: a new night, no regression
    rerun = capsys.readouterr().out
    assert ": pass" in rerun and "REGRESSION" not in rerun
    assert _night(cli + ["--spec", str(bad)]) == 1
    planted = capsys.readouterr().out
    flagged = [line for line in planted.splitlines() if "REGRESSION" in line]
    assert flagged and all("| lora |" in line and "boolq" in line for line in flagged if "| bq-64 |" in line)

    nights = track.nightly_runs(tracking_uri, "nightly-tiny")
    assert [r.data.tags[nightly.VERDICT] for r in nights] == ["regression", "pass", "baseline"]
    assert len(track.cell_runs(tracking_uri, "nightly-tiny")) == 3 * 2  # every night trains every cell again
    client = MlflowClient(tracking_uri)
    assert {"nightly.md", "nightly.html"} <= {a.path for a in client.list_artifacts(nights[0].info.run_id)}

    # `last` skips the regressed night: tomorrow is compared with the last good one.
    assert nightly.history(tracking_uri, "nightly-tiny", "last", 10) == [nights[1].info.run_id, nights[2].info.run_id]


def test_bad_input_is_one_line_and_exit_2(write_spec, tracking_uri, capsys):
    good = write_spec(NIGHTLY.format(lr="1.0e-2"), "good.yaml")
    assert main(["nightly", "--spec", str(good), "--tracking-uri", tracking_uri, "--against", "0123abcd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: MLflow creating the new store
    assert err.startswith("error: --against 0123abcd: no nightly run of 'nightly-tiny'")
    assert main(["nightly", "--spec", "no/such.yaml", "--tracking-uri", tracking_uri]) == 2
    assert capsys.readouterr().err.strip() == "error: no/such.yaml: no such file"


def _frame(scores: dict[str, list[float]], tokens_per_s: dict[str, float] | None = None, night: int = 0) -> pd.DataFrame:
    """One night's results frame: method -> per-seed accuracy (fractions) on one task, with throughput."""
    rows = []
    for method, values in scores.items():
        for seed, value in enumerate(values, start=1):
            rows.append(dict(run_key=f"{method}-{seed}-{night}", method=method, backbone="m", regime="r", seed=seed, task="arc_easy",
                             metric="acc", value=value, tokens_per_s=(tokens_per_s or {}).get(method, 100.0), peak_mem_mb=1000.0))
    return pd.DataFrame(rows)


def test_identical_nights_pass_and_a_drop_beyond_the_seed_spread_is_a_regression():
    earlier = [_frame({"lora": [0.60, 0.66, 0.63], "none": [0.41, 0.41, 0.41]}, night=n) for n in range(3)]
    assert not nightly.accuracy_gate(earlier[0], earlier).regression.any()  # deterministic reruns
    gate = nightly.accuracy_gate(earlier[0], earlier).set_index("method")
    assert gate.loc["lora", "runs_earlier"] == 3  # three nights of the same three runs are three runs, not nine
    dropped = _frame({"lora": [0.40, 0.45, 0.42], "none": [0.41, 0.41, 0.41]})
    gate = nightly.accuracy_gate(dropped, earlier).set_index("method")
    assert gate.loc["lora", "regression"] and not gate.loc["none", "regression"]
    assert gate.loc["lora", "diff"] == pytest.approx(100 * (np.mean([0.40, 0.45, 0.42]) - np.mean([0.60, 0.66, 0.63])))
    assert "Holm" in gate.loc["lora", "test"].correction
    within = _frame({"lora": [0.58, 0.65, 0.61], "none": [0.40, 0.40, 0.40]})  # seed noise, and zero-shot 1 point down
    gate = nightly.accuracy_gate(within, earlier, margin=2.0).set_index("method")
    assert not gate["regression"].any()  # lora within its seeds' spread; none within the margin


def test_the_one_sided_test_is_scipys_pooled_t_with_the_margin():
    x, y = np.array([55.0, 58.0, 52.0]), np.array([60.0, 63.0, 59.0, 61.0, 64.0, 58.0])
    test = nightly.worse_by_more_than(x, y, margin=1.5)
    assert test.p == pytest.approx(scipy_stats.ttest_ind(x + 1.5, y, alternative="less").pvalue)
    assert nightly.worse_by_more_than([41.0] * 3, [44.0] * 3, margin=2.0).p == 0.0  # exact: 3 points > margin
    assert nightly.worse_by_more_than([43.0] * 3, [44.0] * 3, margin=2.0).p == 1.0


def test_the_gate_does_not_cry_wolf_and_catches_a_real_drop():
    """Simulated nights of 21 comparisons (7 methods × 3 tasks, 3 seeds, seed spread 5 points,
    every run re-drawn each night, the spec's default gate): the chance of any false regression
    in a night, and of catching one method that dropped 10 points on its three tasks."""
    gate, rng, nights = spec.GateSpec(), np.random.default_rng(0), 2000
    earlier = rng.normal(60, 5, (nights, 21, 3 * gate.nights))
    same = rng.normal(60, 5, (nights, 21, 3))
    dropped = same - np.where(np.arange(21) < 3, 10.0, 0.0)[None, :, None]  # method 0's three tasks
    x, y = same[0, 0], earlier[0, 0]
    assert nightly.drop_p(same, earlier, gate.margin)[0, 0] == pytest.approx(nightly.worse_by_more_than(x, y, gate.margin).p)

    def flagged(tonight):  # Holm per night, by hand and vectorized (statsmodels' runs gc.collect() per call)
        p = nightly.drop_p(tonight, earlier, gate.margin)
        order = np.argsort(p, axis=1)
        passes = np.take_along_axis(p, order, axis=1) <= gate.alpha / (p.shape[1] - np.arange(p.shape[1]))
        n_rejected = np.where(passes.all(axis=1), p.shape[1], passes.argmin(axis=1))
        rejected = np.zeros_like(p, bool)
        np.put_along_axis(rejected, order, np.arange(p.shape[1])[None, :] < n_rejected[:, None], axis=1)
        assert (rejected[:5] == [multipletests(night, gate.alpha, method="holm")[0] for night in p[:5]]).all()
        return rejected

    false_alarms = flagged(same).any(axis=1).mean()
    caught = flagged(dropped)[:, :3].any(axis=1).mean()
    assert false_alarms <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / nights)  # at most 5%, within sampling error
    assert caught >= 0.90


def test_throughput_is_relative_to_lora_measured_the_same_night():
    earlier = [_frame({"lora": [0.6] * 3, "dora": [0.6] * 3}, {"lora": 100.0, "dora": 80.0 + n}, night=n) for n in range(3)]
    slower_runner = _frame({"lora": [0.6] * 3, "dora": [0.6] * 3}, {"lora": 60.0, "dora": 48.6})  # everything 40% slower
    gate = nightly.cost_gate(slower_runner, earlier)
    assert set(gate["method"]) == {"dora"} and not gate["regression"].any()
    assert gate.set_index("metric").loc["tokens_per_s", "earlier"] == pytest.approx(np.mean([0.80, 0.81, 0.82]))
    slower_dora = _frame({"lora": [0.6] * 3, "dora": [0.6] * 3}, {"lora": 100.0, "dora": 50.0})
    assert nightly.cost_gate(slower_dora, earlier).set_index("metric").loc["tokens_per_s", "regression"]

"""The nightly gate: a planted regression exits 1 through the real CLI (local Ray, SQLite
MLflow, DeepSpeed), an identical rerun exits 0, a throughput blip inside the noise band passes."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline import nightly, track
from pipeline.__main__ import main
from tests.helpers import local_ray_instance, sweep_frames

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
    assert nightly.reference(tracking_uri, "nightly-tiny", "last") == nights[1].info.run_id


def test_bad_input_is_one_line_and_exit_2(write_spec, tracking_uri, capsys):
    good = write_spec(NIGHTLY.format(lr="1.0e-2"), "good.yaml")
    assert main(["nightly", "--spec", str(good), "--tracking-uri", tracking_uri, "--against", "0123abcd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: MLflow creating the new store
    assert err.startswith("error: --against 0123abcd: no nightly run of 'nightly-tiny'")
    assert main(["nightly", "--spec", "no/such.yaml", "--tracking-uri", tracking_uri]) == 2
    assert capsys.readouterr().err.strip() == "error: no/such.yaml: no such file"


def _nights(tokens_per_s_earlier, tokens_per_s_tonight, mem_tonight=1000.0):
    """(earlier, tonight) results frames of the same items; one method's timings per seed."""
    frames = []
    for timings, mem in ((tokens_per_s_earlier, [1000.0, 1010.0, 990.0]), (tokens_per_s_tonight, [mem_tonight] * 3)):
        results, _ = sweep_frames({"lora": 0.6}, tasks=("arc_easy",), n_items=50)
        seed_of = {s: i for i, s in enumerate(sorted(results["seed"].unique()))}
        results["tokens_per_s"] = results["seed"].map(lambda s: timings[seed_of[s]])
        results["peak_mem_mb"] = results["seed"].map(lambda s: mem[seed_of[s]])
        frames.append(results)
    return frames


def test_throughput_blip_inside_the_noise_band_passes():
    # Earlier night: 100 ± 10 tokens/s over its seeds, so the band is ±30 (3 std > the 25% floor).
    earlier, tonight = _nights([90.0, 100.0, 110.0], [75.0, 80.0, 85.0])
    gate = nightly.cost_gate(tonight, earlier)
    assert not gate["regression"].any()
    assert gate.set_index("metric").loc["tokens_per_s", "band"] == pytest.approx(30.0)

    earlier, tonight = _nights([90.0, 100.0, 110.0], [55.0, 60.0, 65.0], mem_tonight=1500.0)
    gate = nightly.cost_gate(tonight, earlier).set_index("metric")
    assert gate.loc["tokens_per_s", "regression"] and gate.loc["peak_mem_mb", "regression"]


def test_identical_items_are_no_regression_and_a_drop_is():
    earlier, items = sweep_frames({"lora": 0.7, "none": 0.5}, tasks=("arc_easy",), n_items=200)
    assert not nightly.accuracy_gate(items, items)["regression"].any()
    worse = items.copy()
    worse.loc[worse["method"] == "lora", "acc"] = items.loc[items["method"] == "none", "acc"].to_numpy()
    gate = nightly.accuracy_gate(worse, items).set_index("method")
    assert gate.loc["lora", "regression"] and not gate.loc["none", "regression"]
    assert "Holm" in gate.loc["lora", "test"].correction

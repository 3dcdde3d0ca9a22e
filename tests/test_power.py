"""`pipeline plan` prints each block's minimal detectable effect before anything runs, from the
item counts and, where the store holds earlier runs of the block, their seed spread."""

from __future__ import annotations

import math
import re

import numpy as np
from mlflow.tracking import MlflowClient
from scipy.stats import norm

from jobs.tracking import KIND, experiment_id
from pipeline.__main__ import main

SWEEP = """
name: power
backbones: [tiny-llama]
methods:
  - name: none
  - name: lora
    hparams: {r: 4}
  - name: ia3
tasks: [arc_easy, openbookqa]
regimes:
  - name: cs-32
    tasks: [arc_easy, openbookqa]
    n_examples: 32
seeds: [1, 2]
train: {lr: 1.0e-3, micro_batch_size: 4, max_steps: 6, max_seq_len: 128}
eval: {limit: 200, batch_size: 8}
"""
Z = norm.ppf(1 - 0.05 / 6 / 2) + norm.ppf(0.8)  # m = 2 methods × (2 tasks + Average) against the baseline
ITEM_VAR = 2 * (0.25 * 100**2 / 200) / 2**2  # two tasks of 200 items, methods disagreeing on a quarter


def mde_printed(out: str) -> float:
    return float(re.search(r"cs-32: 2 task\(s\) × 200 items, 2 seed\(s\): MDE ([0-9.]+) points", out).group(1))


def test_plan_prints_the_mde_from_the_item_counts_before_any_run(write_spec, tracking_uri, capsys):
    assert main(["plan", str(write_spec(SWEEP)), "--tracking-uri", tracking_uri, "--target-mde", "3"]) == 0
    out = capsys.readouterr().out
    assert "α/m = 0.05/6" in out and "no earlier runs: item noise only" in out
    assert mde_printed(out) == round(Z * math.sqrt(ITEM_VAR), 2)
    assert "--target-mde 3: out of reach with these items" in out  # 200 items cannot resolve 3 points


def test_earlier_runs_give_the_seed_spread_and_the_seeds_a_target_needs(write_spec, tracking_uri, capsys):
    store = MlflowClient(tracking_uri)
    scores = {"lora": [(0.60, 0.50), (0.66, 0.52), (0.63, 0.49)], "ia3": [(0.55, 0.45), (0.58, 0.47)]}
    for method, seeds in scores.items():
        for i, (arc, obqa) in enumerate(seeds):
            tags = {KIND: "cell", "sweep": "power", "run_key": f"{method}-{i}"}
            run = store.create_run(experiment_id(tracking_uri, "power"), tags=tags)
            for key, value in {"backbone": "tiny-llama", "regime.name": "cs-32", "label": method, "method": method}.items():
                store.log_param(run.info.run_id, key, value)
            store.log_metric(run.info.run_id, "arc_easy/acc", arc)
            store.log_metric(run.info.run_id, "openbookqa/acc", obqa)
            store.set_terminated(run.info.run_id, "FINISHED")
    spread = np.mean([np.std([100 * (a + o) / 2 for a, o in seeds], ddof=1) for seeds in scores.values()])
    assert main(["plan", str(write_spec(SWEEP)), "--tracking-uri", tracking_uri, "--target-mde", "10"]) == 0
    out = capsys.readouterr().out
    assert f"seed spread {spread:.2f} points from 5 earlier runs" in out
    assert mde_printed(out) == round(Z * math.sqrt(ITEM_VAR + 2 * spread**2 / 2), 2)
    seeds = max(2, math.ceil(2 * spread**2 / ((10 / Z) ** 2 - ITEM_VAR)))
    assert f"--target-mde 10: {seeds} seeds" in out and seeds > 2

"""GLUE: encoder backbones, per-task cells, our own scoring, and one GLUE sweep through Ray and MLflow."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

import adapters
from jobs import backbones
from jobs.contract import TrainArgs
from jobs.families import glue
from jobs.train import train
from pipeline import spec, track
from pipeline.__main__ import main

GLUE_SWEEP = """
name: tinyglue
backbones: [tiny-bert]
methods:
  - name: lora
    hparams: {r: 4}
tasks: [sst2, mrpc, cola, qnli, rte, stsb]
regimes:
  - name: glue-16
    tasks: [sst2, mrpc, cola, rte, stsb]
    n_examples: 16
seeds: [1]
train: {lr: 1.0e-3, micro_batch_size: 8, max_steps: 2, max_seq_len: 64}
eval: {limit: 24, batch_size: 16}
"""


def test_metrics_agree_with_scikit_learn_and_scipy():
    gold, pred = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 1, 0, 1, 1, 0, 1, 0]
    assert glue.metrics("sst2", gold, pred) == {"acc": accuracy_score(gold, pred)} == {"acc": 0.7}
    assert glue.metrics("mrpc", gold, pred) == pytest.approx({"acc": 0.7, "f1": f1_score(gold, pred)})
    assert glue.metrics("mrpc", gold, pred)["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))  # tp=4, fp=1, fn=2
    tp, tn, fp, fn = 4, 3, 1, 2
    by_hand = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = glue.metrics("cola", gold, pred)["mcc"]
    assert mcc == pytest.approx(matthews_corrcoef(gold, pred)) and mcc == pytest.approx(by_hand)
    scores, predicted = [0.0, 1.5, 2.0, 3.2, 4.8, 5.0], [0.3, 1.0, 2.5, 3.0, 4.0, 4.9]
    assert glue.metrics("stsb", scores, predicted) == pytest.approx(
        {"pearson": pearsonr(scores, predicted)[0], "spearman": spearmanr(scores, predicted)[0]}
    )
    assert glue.metrics("stsb", scores, predicted)["spearman"] == pytest.approx(1.0)  # same order


@pytest.mark.slow  # DeepSpeed engines
@pytest.mark.parametrize("task", ["sst2", "mrpc", "stsb"])  # one sentence, a pair, regression
def test_tiny_encoder_trains_and_scores(task, data_dir):
    torch.manual_seed(0)
    model, tokenizer = backbones.load("tiny-bert", glue.num_labels(task))
    model = adapters.apply(model, "lora", r=4)
    head = [p for n, p in model.named_parameters() if "modules_to_save" in n and p.requires_grad]
    before = [p.detach().clone() for p in head]
    examples = glue.training_examples(task, 16, 0, data_dir)
    model, result = train(model, tokenizer, glue.tokenize(examples, tokenizer, 64), TrainArgs(lr=1e-2, micro_batch_size=8, max_steps=3, max_seq_len=64), seed=0)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert head and any(not torch.equal(a, b) for a, b in zip(before, head)), "the head must train"
    scores = glue.evaluate(model.merge_and_unload(), tokenizer, [task], data_dir, limit=20, batch_size=8, max_len=64)
    assert set(scores.metrics[task]) == set(glue.TASKS[task].metrics)
    rows = scores.samples[task]
    assert len(rows) == 20 and len({r["doc_id"] for r in rows}) == 20
    assert [i["doc_id"] for i in scores.inputs[task]] == [r["doc_id"] for r in rows]
    if task == "stsb":
        assert all(isinstance(r["pred"], float) and r["sq_err"] == pytest.approx((r["pred"] - r["gold"]) ** 2) for r in rows)
    else:
        assert scores.metrics[task]["acc"] == pytest.approx(np.mean([r["acc"] for r in rows]))


def test_glue_regime_is_one_cell_per_task(write_spec):
    cells = spec.expand(spec.load(write_spec(GLUE_SWEEP)))
    assert [(c.regime.name, c.regime.tasks, c.tasks) for c in cells] == [
        ("glue-16", ["sst2"], ["sst2"]),
        ("glue-16", ["mrpc"], ["mrpc"]),
        ("glue-16", ["cola"], ["cola"]),
        ("glue-16", ["rte"], ["qnli", "rte"]),  # RTE's entailment head also scores QNLI
        ("glue-16", ["stsb"], ["stsb"]),
    ]
    assert len({c.run_key for c in cells}) == 5


@pytest.mark.parametrize(
    "edit, message",
    [
        (("tasks: [sst2, mrpc, cola, rte, stsb]\n    n_examples", "tasks: [qnli]\n    n_examples"), "regimes.0.tasks: 'qnli' has no train split in"),
        (("tasks: [sst2, mrpc, cola, qnli, rte, stsb]", "tasks: [sst2, arc_easy]"), "GLUE and commonsense tasks cannot share a sweep"),
        (("tasks: [sst2, mrpc, cola, qnli, rte, stsb]", "tasks: [sst2, mrpc, cola, qnli, rte]"), "a head trained on 'stsb' scores none of `tasks`"),
    ],
)
def test_glue_sweeps_that_cannot_run_are_rejected_in_one_line(edit, message, write_spec, capsys):
    path = write_spec(GLUE_SWEEP.replace(*edit))
    with pytest.raises(spec.SpecError, match=message):
        spec.load(path)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_encoder_backbone_on_commonsense_is_rejected(write_spec):
    from tests.helpers import TINY_SWEEP

    with pytest.raises(spec.SpecError, match="'tiny-bert' is an encoder"):
        spec.load(write_spec(TINY_SWEEP.replace("[tiny-llama]", "[tiny-bert]")))


@pytest.mark.slow  # DeepSpeed engines
def test_glue_cell_runs_through_ray_and_mlflow(write_spec, tracking_uri, local_ray, capsys):
    path = write_spec(GLUE_SWEEP.replace("[sst2, mrpc, cola, rte, stsb]", "[rte]"))
    assert main(["run", str(path), "--tracking-uri", tracking_uri]) == 0
    table = capsys.readouterr().out
    assert "| lora" in table and "qnli" in table and "rte" in table
    [run] = track.cell_runs(tracking_uri, "tinyglue", status=None)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert 0 <= metrics["rte/acc"] <= 1 and 0 <= metrics["qnli/acc"] <= 1
    assert metrics["avg/score"] == pytest.approx((metrics["rte/acc"] + metrics["qnli/acc"]) / 2)
    samples = MlflowClient(tracking_uri).download_artifacts(run.info.run_id, "eval/samples_rte.jsonl")
    items = [json.loads(line) for line in open(samples)]
    assert len(items) == 24 and metrics["rte/acc"] == pytest.approx(np.mean([i["acc"] for i in items]))
    adapter = {a.path for a in MlflowClient(tracking_uri).list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter


def test_houlsby_adapters_sit_after_an_encoders_attention_and_ffn():
    model, _ = backbones.load("tiny-bert", 2)
    model = adapters.apply(model, "adapter", bottleneck=8)
    wrapped = [name for name, module in model.named_modules() if type(module).__name__ == "Bottleneck"]
    assert wrapped == [f"bert.encoder.layer.{i}.{where}.dense" for i in range(2) for where in ("attention.output", "output")]

"""A whole sweep through a real local Ray and a real SQLite MLflow store, then a rerun."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from pipeline import spec, track
from pipeline.__main__ import main
from tests.helpers import TINY_SWEEP

pytestmark = pytest.mark.slow  # real Ray, DeepSpeed engines or processes


def test_sweep_runs_logs_and_never_redoes_finished_cells(write_spec, tracking_uri, local_ray, capsys):
    path = write_spec(TINY_SWEEP)
    cells = spec.expand(spec.load(path))
    assert main(["run", str(path), "--tracking-uri", tracking_uri]) == 0
    table = capsys.readouterr().out
    assert "| none" in table and "| lora" in table and "arc_easy" in table

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    parents = client.search_runs([experiment], f"tags.`{track.KIND}` = 'sweep'")
    children = track.cell_runs(tracking_uri, "tiny", status=None)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(cells) == 2
    assert {c.data.tags["run_key"] for c in children} == {c.run_key for c in cells}

    by_method = {c.data.params["method"]: c for c in children}
    for method, run in by_method.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert 0.0 <= run.data.metrics["arc_easy/acc"] <= 1.0
        samples = client.download_artifacts(run.info.run_id, "eval/samples_arc_easy.jsonl")
        items = [json.loads(line) for line in open(samples)]
        assert len(items) == 16
        assert run.data.metrics["arc_easy/acc"] == pytest.approx(sum(i["acc"] for i in items) / 16)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")} | {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"eval/items.json", "report.html"} <= artifacts  # the per-item table and the cell's own page
    lora = by_method["lora"]
    assert lora.data.metrics["params/trainable"] > 0 and by_method["none"].data.metrics["params/trainable"] == 0
    assert len(client.get_metric_history(lora.info.run_id, "train/loss")) == 6
    assert lora.data.metrics["train/tokens_per_s"] > 0 and lora.data.metrics["train/peak_mem_mb"] > 0
    assert lora.data.params["hparams.r"] == "4"
    final = json.loads(open(client.download_artifacts(lora.info.run_id, "analysis/final.json")).read())
    assert final["step"] == 6 and final["modules"] and all(m["stable_rank"] >= 1.0 - 1e-6 for m in final["modules"])
    assert {a.path for a in client.list_artifacts(lora.info.run_id, "adapter")} >= {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    # provenance: the driver's commit, where the cell ran, and fingerprints of its data
    tags = lora.data.tags
    assert tags["git.commit"] == parents[0].data.tags["git.commit"] and len(tags["git.commit"]) == 40
    assert tags["version.torch"] and tags["version.lm_eval"] and int(tags["hw.cpu_count"]) >= 1 and tags["hw.gpu_count"] == "0"
    assert len(tags["data.train_sha256"]) == len(tags["data.eval_sha256"]) == 64
    assert by_method["none"].data.tags["data.eval_sha256"] == tags["data.eval_sha256"]  # the same scored items
    contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for i in lora.inputs.dataset_inputs}
    assert contexts == {"cs-32/train": "training", "arc_easy/eval": "evaluation"}
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert logged >= {"comparison.md", "comparison.html", "comparison.tex", "comparison.csv", "report.html", "sweep.yaml"}

    # The report command rebuilds the tables from MLflow alone, in any format.
    assert main(["report", "tiny", "--tracking-uri", tracking_uri, "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.startswith("row,column,") and "test_name" in csv and "lora" in csv
    assert main(["report", "tiny", "--tracking-uri", tracking_uri]) == 0
    footer = capsys.readouterr().out.partition("## Provenance")[2]
    assert f"Code: commit {tags['git.commit'][:12]}" in footer and "torch " in footer and "cores)" in footer and "WARNING" not in footer
    assert main(["report", "tiny", "--tracking-uri", tracking_uri, "--baseline", "dora"]) == 2
    assert "baseline 'dora' is not a method" in capsys.readouterr().err

    # A rerun finds every cell FINISHED: nothing runs again, no duplicate runs.
    assert main(["run", str(path), "--tracking-uri", tracking_uri]) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().err
    assert len(track.cell_runs(tracking_uri, "tiny", status=None)) == 2


MIXED = """
name: mixed
backbones: [tiny-llama]
methods:
  - name: lora
    hparams: {r: 4}
  - name: lr_lora
    hparams: {r: 4}
  - name: peft
    hparams: {peft_type: LOKR, r: 4}
  - name: peft
    hparams: {peft_type: OFT, r: 0, oft_block_size: 4}
tasks: [arc_easy]
regimes:
  - name: cs-16
    tasks: [arc_easy]
    n_examples: 16
seeds: [1]
train: {lr: 1.0e-3, micro_batch_size: 4, max_steps: 3, max_seq_len: 96}
eval: {limit: 16, batch_size: 8}
"""


def test_a_sweep_mixing_our_methods_and_any_peft_config_compares_them_in_one_table(write_spec, tracking_uri, local_ray, capsys):
    assert main(["run", str(write_spec(MIXED)), "--tracking-uri", tracking_uri]) == 0
    table = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in table.partition("## Average gain")[0].splitlines() if line.startswith("| ") and "Method" not in line]
    assert sorted(row.split("(")[0] for row in rows) == ["lokr", "lora", "lr_lora", "oft"]  # with the hparams that differ
    tested = table.partition("## Per-task tests against lora")[2]
    assert all(f"| {row}" in tested for row in ("lr_lora", "lokr", "oft")) and "exact McNemar" in tested
    assert len(track.cell_runs(tracking_uri, "mixed")) == 4

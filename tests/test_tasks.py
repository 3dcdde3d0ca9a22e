"""Local tasks reproduce lm-eval's official prompts, and scoring keeps per-item results."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import lm_eval
import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml

from jobs.families import multiple_choice as tasks
from jobs.families.multiple_choice import evaluate

OFFICIAL = Path(lm_eval.__file__).parent / "tasks"
OFFICIAL_YAML = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "social_iqa": "siqa/siqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}


def as_hub_row(task: str, row: dict) -> dict:
    """Our row in the shape of the hub dataset that lm-eval's official task reads."""
    if task == "boolq":
        return {"passage": row["passage"], "question": row["raw_question"], "label": row["label"]}
    if task == "piqa":
        return {k: row[k] for k in ("goal", "sol1", "sol2", "label")}
    if task == "social_iqa":
        answers = dict(zip(("answerA", "answerB", "answerC"), row["choices"]))
        return {"context": row["context"], "question": row["raw_question"], **answers, "label": str(row["label"] + 1)}
    if task == "hellaswag":
        keys = ("activity_label", "ctx_a", "ctx_b")
        return {**{k: row[k] for k in keys}, "ctx": row["question"], "endings": row["choices"], "label": str(row["label"])}
    if task == "winogrande":
        return {k: row[k] for k in ("sentence", "option1", "option2", "answer")}
    stem = {"openbookqa": "question_stem"}.get(task, "question")
    return {stem: row["question"], "choices": {"text": row["choices"], "label": row["choice_labels"]}, "answerKey": row["answerKey"]}


def official_task(name: str, rows: list[dict]) -> ConfigurableTask:
    """lm-eval's own task config, fed hub-shaped rows instead of downloading."""
    config = load_yaml(OFFICIAL / OFFICIAL_YAML[name])
    rows = datasets.Dataset.from_list(rows)
    config.update(custom_dataset=lambda **_: datasets.DatasetDict({s: rows for s in ("train", "validation", "test")}), dataset_kwargs=None, metadata={})
    return ConfigurableTask(config=config)


@pytest.mark.parametrize("name", tasks.names())
def test_local_prompt_equals_lm_eval_official(name, data_dir):
    # Validation splits: every task has one, and ARC's carries the choice letters the official config reads.
    ours = tasks.load(name, data_dir)
    raw = list(ours.dataset["validation"])[:25]
    official = official_task(name, [as_hub_row(name, r) for r in raw])
    docs, official_docs = list(ours.validation_docs())[:25], list(official.validation_docs())
    assert len(docs) == len(official_docs) == 25
    for doc, hub_doc in zip(docs, official_docs):
        assert tasks.render(ours, doc) == tasks.render(official, hub_doc)
        assert ours.doc_to_choice(doc) == official.doc_to_choice(hub_doc)


def test_boolq_training_rows_render_without_a_passage(data_dir):
    boolq = tasks.load("boolq", data_dir)
    context, answer = tasks.render(boolq, next(iter(boolq.training_docs())))
    assert context == "Question: do iran and afghanistan speak the same language?\nAnswer:" and answer == " yes"


def test_training_examples_are_deterministic_and_sized(data_dir):
    first = tasks.training_examples(["arc_easy", "openbookqa"], 50, 0, data_dir)
    assert len(first) == 50 and first == tasks.training_examples(["arc_easy", "openbookqa"], 50, 0, data_dir)
    assert first != tasks.training_examples(["arc_easy", "openbookqa"], 50, 1, data_dir)
    with pytest.raises(tasks.TaskError, match="no training split"):
        tasks.training_examples(["piqa"], 5, 0, data_dir)


def test_lm_eval_scores_a_seeded_subset_and_keeps_every_item(data_dir):
    from jobs import backbones

    model, tokenizer = backbones.load("tiny-llama")
    result = evaluate(model, tokenizer, ["arc_easy", "winogrande"], data_dir, limit=12, batch_size=8)
    for name in ("arc_easy", "winogrande"):
        items = result.samples[name]
        expected_ids = tasks.eval_subset(tasks.load(name, data_dir), 12)
        assert sorted(i["doc_id"] for i in items) == expected_ids
        assert all(i["acc"] in (0.0, 1.0) and i["acc"] == float(i["pred"] == i["gold"]) for i in items)
        assert result.metrics[name]["acc"] == pytest.approx(sum(i["acc"] for i in items) / len(items))
        scored = result.inputs[name]  # what the eval sha256 is taken over: every item as lm-eval scored it
        assert [i["doc_id"] for i in scored] == expected_ids and all(len(json.loads(i["text"])) >= 2 for i in scored)
    assert "acc_norm" in result.metrics["arc_easy"] and "acc_norm" not in result.metrics["winogrande"]


@pytest.mark.parametrize("quiet", [False, True])
def test_lm_eval_request_bars_follow_tqdm_disable(data_dir, capfd, monkeypatch, quiet):
    """A sweep's workers run with TQDM_DISABLE=1: their logs carry no lm-eval request bars."""
    from jobs import backbones

    monkeypatch.setenv("TQDM_DISABLE", "1" if quiet else "0")
    model, tokenizer = backbones.load("tiny-llama")
    capfd.readouterr()
    evaluate(model, tokenizer, ["arc_easy"], data_dir, limit=4, batch_size=4)
    assert ("Running loglikelihood requests" in capfd.readouterr().err) is not quiet

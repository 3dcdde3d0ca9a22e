"""GLUE: sequence classification (regression for STS-B) with a task head, scored by our own code.

lm-eval does not score fine-tuned classifiers, so this family holds the whole GLUE side of a
cell: the tasks' fields and label spaces, training examples, and evaluation with the metrics
GLUE defines (scikit-learn / scipy). A GLUE regime trains one model per task (each task has its
own head): it maps to one cell per task, scored on the sweep's tasks that share the task's
label space (RTE's head also scores QNLI). torch, scipy and scikit-learn are imported inside
the functions that use them, so `validate` reads this module without them. Data comes from `<data_dir>/glue/<task>/<split>.jsonl`, or
from the hub (`nyu-mll/glue`) on a cluster without a local data dir. Per-item predictions keep
the shape of the commonsense path (`doc_id`, `gold`, `pred`, `acc`) so paired tests work here too.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from jobs.contract import EvalArgs, Regime
from jobs.families import EvalResult, Family, TaskError


@dataclass(frozen=True)
class Task:
    text_fields: tuple[str, ...]  # one sentence, or a pair encoded as (first, second)
    labels: str  # the label space: tasks that share one can score each other's heads
    metrics: tuple[str, ...]  # what GLUE reports; the first stands for the task in averages

    @property
    def num_labels(self) -> int:
        return 1 if self.labels == "similarity" else 2


# Label conventions of the HF glue builder (RTE/QNLI: 0 = entailment), as ../shared/data keeps them.
TASKS = {
    "sst2": Task(("sentence",), "sentiment", ("acc",)),
    "mrpc": Task(("sentence1", "sentence2"), "paraphrase", ("acc", "f1")),
    "cola": Task(("sentence",), "acceptability", ("mcc",)),
    "qnli": Task(("question", "sentence"), "entailment", ("acc",)),
    "rte": Task(("sentence1", "sentence2"), "entailment", ("acc",)),
    "stsb": Task(("sentence1", "sentence2"), "similarity", ("pearson", "spearman")),
}
HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class Example:
    """One classification (or regression) example: the task's texts and its label."""

    texts: tuple[str, ...]
    label: int | float


def names() -> tuple[str, ...]:
    return tuple(TASKS)


def num_labels(name: str) -> int:
    return TASKS[name].num_labels


def scored_with(train_task: str, candidates: list[str]) -> list[str]:
    """The tasks of `candidates` a head trained on `train_task` can score (same label space)."""
    return [t for t in candidates if t in TASKS and TASKS[t].labels == TASKS[train_task].labels]


def has_split(name: str, split: str, data_dir: Path | None) -> bool:
    """Whether the local data has `split` for `name` (the hub has train and validation for all)."""
    return data_dir is None or (data_dir / "glue" / name / f"{split}.jsonl").is_file()


def docs(name: str, split: str, data_dir: Path | None) -> list[dict]:
    """The rows of one split, local JSONL or the hub dataset (same fields: the HF glue builder's)."""
    if data_dir is None:
        import datasets

        return list(datasets.load_dataset(HUB_DATASET, name, split=split))
    path = data_dir / "glue" / name / f"{split}.jsonl"
    if not path.is_file():
        raise TaskError(f"task {name!r} has no {split} split in {data_dir} (no {path.name})")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def example(name: str, doc: dict) -> Example:
    return Example(tuple(doc[f] for f in TASKS[name].text_fields), doc["label"])


def training_examples(name: str, n_examples: int | None, sample_seed: int, data_dir: Path | None) -> list[Example]:
    """`n_examples` (all if None) drawn deterministically from the task's train split."""
    pool = docs(name, "train", data_dir)
    if n_examples is not None:
        if n_examples > len(pool):
                raise TaskError(f"regime asks for {n_examples} examples but {name} has {len(pool)}")
        pool = random.Random(sample_seed).sample(pool, n_examples)
    return [example(name, doc) for doc in pool]


def tokenize(examples: list[Example], tokenizer, max_len: int) -> list[dict]:
    """Token ids (a pair as the tokenizer joins pairs, token types included) and the label."""
    rows = []
    for ex in examples:
        encoded = tokenizer(*ex.texts, truncation=True, max_length=max_len)
        rows.append({**{k: v for k, v in encoded.items() if k != "attention_mask"}, "labels": ex.label})
    return rows


def metrics(name: str, gold, pred) -> dict[str, float]:
    """GLUE's metrics for `name` from gold labels and predictions (classes, or scores for STS-B)."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    gold, pred = np.asarray(gold), np.asarray(pred)
    compute = {
        "acc": lambda: accuracy_score(gold, pred),
        "f1": lambda: f1_score(gold, pred),
        "mcc": lambda: matthews_corrcoef(gold, pred),
        "pearson": lambda: pearsonr(gold, pred).statistic,
        "spearman": lambda: spearmanr(gold, pred).statistic,
    }
    return {m: float(compute[m]()) for m in TASKS[name].metrics}


def _logits(model, encoded: list[dict], pad: int, batch_size: int):
    """The classifier's logits for `encoded` rows, `batch_size` rows at a time, on the CPU."""
    import torch

    from jobs.train import collate

    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size], pad)
            batch.pop("labels")
            outputs.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(outputs)


def evaluate(model, tokenizer, task_names: list[str], data_dir: Path | None, limit: int | None, batch_size: int | str, max_len: int = 512) -> EvalResult:
    """Scores on a seeded subset of `limit` validation items per task (the same subset every cell).
    `batch_size` "auto": all items at once, halved until it fits (accelerate's search, as lm-eval's auto)."""
    from jobs.train import pad_id

    model.eval()
    result = EvalResult({}, {}, {})
    for name in task_names:
        rows = docs(name, "validation", data_dir)
        ids = list(range(len(rows))) if limit is None or limit >= len(rows) else sorted(random.Random(0).sample(range(len(rows)), limit))
        encoded = tokenize([example(name, rows[i]) for i in ids], tokenizer, max_len)
        if batch_size == "auto":
            from accelerate.utils import find_executable_batch_size

            logits = find_executable_batch_size(lambda size: _logits(model, encoded, pad_id(tokenizer), size), len(encoded))()
        else:
            logits = _logits(model, encoded, pad_id(tokenizer), batch_size)
        regression = TASKS[name].num_labels == 1
        pred = logits[:, 0].tolist() if regression else logits.argmax(-1).tolist()
        gold = [rows[i]["label"] for i in ids]
        result.metrics[name] = metrics(name, gold, pred)
        # a per-item 0/1 score for classification (McNemar); squared error for STS-B (no `acc`)
        result.samples[name] = [
            {"doc_id": i, "gold": g, "pred": p, **({"sq_err": (p - g) ** 2} if regression else {"acc": float(p == g)})}
            for i, g, p in zip(ids, gold, pred)
        ]
        result.raw[name] = {"n_items": len(ids), "metrics": result.metrics[name]}
        result.inputs[name] = [{"doc_id": i, "text": json.dumps(example(name, rows[i]).texts, ensure_ascii=False), "gold": g} for i, g in zip(ids, gold)]
    return result


def train_head(model) -> None:
    """Make the task head trainable: it starts random, so every method trains it.

    peft models already hold it in `modules_to_save` (task type SEQ_CLS); for the methods that
    are not peft's (none, full, bitfit, our own modules) the head is `classifier` (BERT, RoBERTa)
    or `score` (decoder models), as peft's SEQ_CLS default names it. `none` thus becomes a linear
    probe: a frozen encoder under a trained head.
    """
    if hasattr(model, "peft_config"):
        return
    heads = [m for n, m in model.named_children() if n in ("classifier", "score")]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no classification head named classifier or score")
    for head in heads:
        head.requires_grad_(True)


class Glue(Family):
    title = "GLUE"
    raw_artifact = "eval/glue_results.json"
    average_metric = "avg/score"  # each task's headline metric (acc, mcc or pearson), averaged as GLUE tables do
    takes_encoders = True

    def tasks(self) -> tuple[str, ...]:
        return names()

    def headline(self, task: str) -> str:
        return TASKS[task].metrics[0]

    def check(self, regime: Regime, scored: list[str], data: Path | None) -> None:
        for name in regime.tasks:
            if data is not None and not has_split(name, "train", data):
                raise TaskError(f"{name!r} has no train split in {data}, so it cannot be trained on (it can be scored)")
            if not scored_with(name, scored):
                raise TaskError(f"a head trained on {name!r} scores none of `tasks` (add {name} to tasks)")

    def cells(self, regime: Regime, scored: list[str]) -> list[tuple[Regime, list[str]]]:
        return [(regime.model_copy(update={"tasks": [t]}), scored_with(t, scored)) for t in regime.tasks]

    def num_labels(self, regime: Regime) -> int | None:
        return num_labels(regime.tasks[0])

    def prepare(self, model) -> None:
        train_head(model)

    def training_examples(self, regime: Regime, data: Path | None) -> list[Example]:
        n = None if regime.n_examples == "full" else regime.n_examples
        return training_examples(regime.tasks[0], n, regime.sample_seed, data)

    def example_rows(self, examples: list) -> list[dict]:
        return [{"text_a": ex.texts[0], **({"text_b": ex.texts[1]} if len(ex.texts) > 1 else {}), "label": ex.label} for ex in examples]

    def encode(self, examples: list, tokenizer, max_len: int) -> list[dict]:
        return tokenize(examples, tokenizer, max_len)

    def evaluate(self, model, tokenizer, tasks: list[str], data: Path | None, args: EvalArgs, max_len: int) -> EvalResult:
        return evaluate(model, tokenizer, tasks, data, args.limit, args.batch_size, max_len)


FAMILY = Glue()

"""Scoring with the lm-evaluation-harness on the in-memory model."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM

from jobs import tasks as task_registry


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]  # task -> {"acc": .., "acc_norm": ..}
    samples: dict[str, list[dict]]  # task -> per-item rows (doc_id, gold, pred, acc, acc_norm), for paired tests
    raw: dict  # lm-eval's results/configs/versions, kept as an artifact


def evaluate(model, tokenizer, task_names: list[str], data_dir: Path | None, limit: int | None, batch_size: int) -> EvalResult:
    """Zero-shot multiple-choice scores on a seeded subset of `limit` items per task."""
    tasks = {name: task_registry.load(name, data_dir) for name in task_names}
    subsets = {name: idx for name, task in tasks.items() if (idx := task_registry.eval_subset(task, limit)) is not None}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)  # simple_evaluate ignores batch_size for objects
    if os.environ.get("TQDM_DISABLE") == "1":  # a sweep's worker: the driver's bar is the display
        # lm-eval passes its bars disable=False explicitly, which tqdm's TQDM_DISABLE default cannot override
        for request_type in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
            setattr(lm, request_type, functools.partial(getattr(lm, request_type), disable_tqdm=True))
    out = simple_evaluate(model=lm, tasks=list(tasks.values()), samples=subsets or None, log_samples=True, bootstrap_iters=0)
    metrics = {
        name: {key.split(",")[0]: float(value) for key, value in out["results"][name].items() if key.split(",")[0] in ("acc", "acc_norm")}
        for name in tasks
    }
    samples = {name: [_item(task, s) for s in out["samples"][name]] for name, task in tasks.items()}
    raw = {k: out[k] for k in ("results", "versions", "n-samples", "configs") if k in out}
    return EvalResult(metrics, samples, raw)


def _item(task, sample: dict) -> dict:
    """One scored item, small enough to keep for every cell."""
    logliks = [float(r[0]) for r in sample["filtered_resps"]]
    return {
        "doc_id": int(sample["doc_id"]),
        "gold": task_registry.gold_index(task, sample["doc"]),
        "pred": max(range(len(logliks)), key=logliks.__getitem__),
        "acc": float(sample["acc"]),
        **({"acc_norm": float(sample["acc_norm"])} if "acc_norm" in sample else {}),
    }

"""Task families: the one interface behind every kind of task the pipeline trains and scores.

A family says how its training examples are drawn and encoded, how a model is scored and which
per-item rows come back, the headline metric of each task, how a regime maps to cells and what
`validate` checks. The spec, the cell runner and the training loop ask a task's family and
never which family it is. A new family is one module in this package that defines `FAMILY`
(found by `families()`), plus its task files.

Family modules import torch, transformers and lm-eval inside the methods that need them, so
that `validate` and `plan` read the families without importing any of those.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from jobs.contract import EvalArgs, Regime

REPO_ROOT = Path(__file__).resolve().parents[2]


class TaskError(ValueError):
    """An unknown task, or a task used in a way its data does not allow."""


def data_dir() -> Path | None:
    """Where the benchmark data lives: $PEFTBENCH_DATA, else ../shared/data beside the repo,
    else None, meaning each family reads its tasks from the hub (a cluster with hub access)."""
    if os.environ.get("PEFTBENCH_DATA"):
        path = Path(os.environ["PEFTBENCH_DATA"]).expanduser().resolve()
        if not path.is_dir():
            raise TaskError(f"PEFTBENCH_DATA={path} is not a directory")
        return path
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]  # task -> {metric: value}
    samples: dict[str, list[dict]]  # task -> per-item rows (doc_id, gold, pred, 0/1 score ...), for paired tests
    raw: dict  # what the scorer reported, kept as the cell's `raw_artifact`
    # task -> the scored items as scored (doc_id, text, gold), in doc order: the eval data's sha256
    inputs: dict[str, list[dict]] = field(default_factory=dict)


class Family:
    """One kind of task. Subclasses fill in every method; `FAMILY` in the module is the instance."""

    title: str  # how errors and docs name the family ("GLUE", "commonsense")
    raw_artifact: str  # where a cell logs `EvalResult.raw`
    average_metric: str  # the cell's metric averaging the tasks' headline metrics
    takes_encoders: bool  # whether encoder-only backbones (no LM head) can train and score it

    def tasks(self) -> tuple[str, ...]:
        """The task names this family knows."""
        raise NotImplementedError

    def headline(self, task: str) -> str:
        """The metric that stands for `task` in averages and tables."""
        raise NotImplementedError

    def check(self, regime: Regime, scored: list[str], data: Path | None) -> None:
        """Raise TaskError (one line) if cells of `regime` scored on `scored` cannot run."""
        raise NotImplementedError

    def cells(self, regime: Regime, scored: list[str]) -> list[tuple[Regime, list[str]]]:
        """(the regime one cell trains on, the tasks it is scored on) for each cell `regime` makes."""
        raise NotImplementedError

    def num_labels(self, regime: Regime) -> int | None:
        """The classifier head a cell of `regime` needs, or None for a causal LM."""
        raise NotImplementedError

    def prepare(self, model) -> None:
        """Whatever the family needs of the adapted model before training (a trainable head)."""

    def training_examples(self, regime: Regime, data: Path | None) -> list:
        """The regime's training examples, drawn deterministically from its sample_seed."""
        raise NotImplementedError

    def example_rows(self, examples: list) -> list[dict]:
        """The examples as plain rows of text and label, independent of any tokenizer: what the
        training sample's sha256 and MLflow dataset are made of."""
        raise NotImplementedError

    def encode(self, examples: list, tokenizer, max_len: int) -> list[dict]:
        """Token rows the training loop batches (`input_ids`, `labels`, ...)."""
        raise NotImplementedError

    def evaluate(self, model, tokenizer, tasks: list[str], data: Path | None, args: EvalArgs, max_len: int) -> EvalResult:
        """Scores and per-item rows of `model` on `tasks`."""
        raise NotImplementedError


@cache
def families() -> tuple[Family, ...]:
    """Every family module of this package (each defines FAMILY), in name order."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        found.append(importlib.import_module(f"{__name__}.{module.name}").FAMILY)
    return tuple(found)


def known_tasks() -> list[str]:
    return [task for family in families() for task in family.tasks()]


def of(task: str) -> Family:
    """The family of `task`; TaskError naming the known tasks if none has it."""
    for family in families():
        if task in family.tasks():
            return family
    raise TaskError(f"unknown task {task!r} (known: {', '.join(known_tasks())})")


def of_regime(regime: Regime) -> Family:
    """The family a regime trains in (the spec checks that a sweep's tasks share one)."""
    return of(regime.tasks[0])

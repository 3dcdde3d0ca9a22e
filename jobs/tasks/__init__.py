"""Evaluation tasks as lm-eval Task objects: the one place that knows prompts.

With a local data dir, each task is the YAML beside this file (lm-eval's official prompt,
reproduced over ../shared/data); without one, it is lm-eval's own task of the same name,
reading the hub dataset. Training renders examples through the same Task object
(`render`), so training and scoring see the same text.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's YAML loader: resolves `!function`

TASK_DIR = Path(__file__).parent
COMMONSENSE = (
    "boolq",
    "piqa",
    "social_iqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
)


REPO_ROOT = TASK_DIR.parents[1]


class TaskError(ValueError):
    """An unknown task, or a task used in a way its data does not allow."""


def names() -> tuple[str, ...]:
    return COMMONSENSE


def data_dir() -> Path | None:
    """Where the benchmark data lives: $PEFTBENCH_DATA, else ../shared/data beside the repo,
    else None, meaning lm-eval's own tasks read the hub datasets (a cluster with hub access)."""
    if os.environ.get("PEFTBENCH_DATA"):
        path = Path(os.environ["PEFTBENCH_DATA"]).expanduser().resolve()
        if not path.is_dir():
            raise TaskError(f"PEFTBENCH_DATA={path} is not a directory")
        return path
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


def load(name: str, data_dir: Path | None) -> ConfigurableTask:
    """The lm-eval Task `name`, reading `data_dir` (local YAML) or the hub (lm-eval's own task)."""
    if name not in COMMONSENSE:
        raise TaskError(f"unknown task {name!r} (known: {', '.join(COMMONSENSE)})")
    if data_dir is None:
        from lm_eval.tasks import TaskManager

        return TaskManager().load_task_or_group([name])[name]
    config = load_yaml(TASK_DIR / f"{name}.yaml")
    files = config["dataset_kwargs"]["data_files"]
    config["dataset_kwargs"]["data_files"] = {split: str(data_dir / rel) for split, rel in files.items()}
    return ConfigurableTask(config=config)


def has_training_split(name: str) -> bool:
    """Whether the local data has a train split for `name`."""
    config = load_yaml(TASK_DIR / f"{name}.yaml", resolve_func=False)
    return "train" in config["dataset_kwargs"]["data_files"]


def render(task: ConfigurableTask, doc: dict) -> tuple[str, str]:
    """(context, continuation) exactly as lm-eval scores the gold choice of `doc`.

    Built from lm-eval's own request construction, so a training example is the text that
    evaluation scores: doc_to_text + target_delimiter + gold choice (or, for partial-scoring
    tasks like WinoGrande, the gold-filled prefix and the scored suffix).
    """
    context = task.fewshot_context(doc, num_fewshot=0)
    requests = task.construct_requests(doc=doc, ctx=context, metadata=(task.config.task, 0, 1))
    return requests[gold_index(task, doc)].arguments


def gold_index(task: ConfigurableTask, doc: dict) -> int:
    """Index of the gold choice, decided as lm-eval's `process_results` decides it."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    return task.doc_to_choice(doc).index(gold) if isinstance(gold, str) else int(gold)


def training_examples(
    task_names: list[str], n_examples: int | None, sample_seed: int, data_dir: Path | None
) -> list[tuple[str, str]]:
    """`n_examples` (all if None) rendered examples drawn deterministically from the tasks' train splits."""
    pool: list[tuple[ConfigurableTask, dict]] = []
    for name in task_names:
        task = load(name, data_dir)
        if not task.has_training_docs():
            raise TaskError(f"task {name!r} has no training split to train on")
        pool.extend((task, doc) for doc in task.training_docs())
    if n_examples is not None:
        if n_examples > len(pool):
            raise TaskError(f"regime asks for {n_examples} examples but {', '.join(task_names)} have {len(pool)}")
        pool = random.Random(sample_seed).sample(pool, n_examples)
    return [render(task, doc) for task, doc in pool]


def eval_subset(task: ConfigurableTask, limit: int | None, seed: int = 0) -> list[int] | None:
    """Sorted indices of a deterministic random subset of `limit` evaluation items (None: all)."""
    n = len(task.eval_docs)
    if limit is None or limit >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), limit))

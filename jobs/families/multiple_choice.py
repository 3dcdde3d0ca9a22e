"""lm-eval multiple choice (the commonsense tasks): log-likelihood of each choice, zero-shot.

With a local data dir, each task is its YAML in `jobs/tasks/` (lm-eval's official prompt,
reproduced over ../shared/data); without one, it is lm-eval's own task of the same name,
reading the hub dataset. Training renders examples through the same lm-eval Task object
(`render`), so training and scoring see the same text, with the loss on the answer only.
lm-eval is imported inside the functions that need it: `validate` reads this module without it.
"""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path

import yaml

from jobs.contract import EvalArgs, Regime
from jobs.families import EvalResult, Family, TaskError

TASK_DIR = Path(__file__).resolve().parents[1] / "tasks"
COMMONSENSE = ("boolq", "piqa", "social_iqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
IGNORE = -100  # label value the loss skips: prompt tokens and padding


def names() -> tuple[str, ...]:
    return COMMONSENSE


def load(name: str, data_dir: Path | None):
    """The lm-eval Task `name`, reading `data_dir` (local YAML) or the hub (lm-eval's own task)."""
    if name not in COMMONSENSE:
        raise TaskError(f"unknown task {name!r} (known: {', '.join(COMMONSENSE)})")
    if data_dir is None:
        from lm_eval.tasks import TaskManager

        return TaskManager().load_task_or_group([name])[name]
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's YAML loader: resolves `!function`

    config = load_yaml(TASK_DIR / f"{name}.yaml")
    files = config["dataset_kwargs"]["data_files"]
    config["dataset_kwargs"]["data_files"] = {split: str(data_dir / rel) for split, rel in files.items()}
    return ConfigurableTask(config=config)


class _PlainLoader(yaml.SafeLoader):
    """Reads a task YAML's data fields without lm-eval: `!function` hooks stay unresolved strings."""


_PlainLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def has_training_split(name: str) -> bool:
    """Whether the local data has a train split for `name`."""
    config = yaml.load((TASK_DIR / f"{name}.yaml").read_text(), Loader=_PlainLoader)
    return "train" in config["dataset_kwargs"]["data_files"]


def render(task, doc: dict) -> tuple[str, str]:
    """(context, continuation) exactly as lm-eval scores the gold choice of `doc`.

    Built from lm-eval's own request construction, so a training example is the text that
    evaluation scores: doc_to_text + target_delimiter + gold choice (or, for partial-scoring
    tasks like WinoGrande, the gold-filled prefix and the scored suffix).
    """
    context = task.fewshot_context(doc, num_fewshot=0)
    requests = task.construct_requests(doc=doc, ctx=context, metadata=(task.config.task, 0, 1))
    return requests[gold_index(task, doc)].arguments


def gold_index(task, doc: dict) -> int:
    """Index of the gold choice, decided as lm-eval's `process_results` decides it."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    return task.doc_to_choice(doc).index(gold) if isinstance(gold, str) else int(gold)


def training_examples(task_names: list[str], n_examples: int | None, sample_seed: int, data_dir: Path | None) -> list[tuple[str, str]]:
    """`n_examples` (all if None) rendered examples drawn deterministically from the tasks' train splits."""
    pool: list[tuple[object, dict]] = []
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


def tokenize(examples: list[tuple[str, str]], tokenizer, max_len: int) -> list[dict[str, list[int]]]:
    """Token ids with the loss on the answer only, split as lm-eval splits context/continuation.

    The whole text is encoded once and the answer is what follows the context's own encoding
    (lm-eval's `_encode_pair`), each encoded as HFLM encodes (`encode`), so tokens, special
    tokens included, match what evaluation scores. Over-long examples lose tokens from the left,
    never from the answer.
    """
    rows = []
    for context, continuation in examples:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # lm-eval moves trailing context whitespace into the continuation
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = encode(tokenizer, context + continuation)
        n_context = len(encode(tokenizer, context))
        labels = [IGNORE] * n_context + whole[n_context:]
        rows.append({"input_ids": whole[-max_len:], "labels": labels[-max_len:]})
    return rows


def encode(tokenizer, text: str) -> list[int]:
    """`text`'s ids as lm-eval's HFLM encodes a request (`tok_encode`): with the tokenizer's own
    special tokens (the BOS a Llama-3 tokenizer prepends; none for SmolLM2's), without them when
    the text already starts with the prefix token HFLM conditions on (BOS, else EOS)."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix_id is not None and text.startswith(tokenizer.decode(prefix_id)):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def eval_subset(task, limit: int | None, seed: int = 0) -> list[int] | None:
    """Sorted indices of a deterministic random subset of `limit` evaluation items (None: all)."""
    n = len(task.eval_docs)
    if limit is None or limit >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), limit))


def evaluate(model, tokenizer, task_names: list[str], data_dir: Path | None, limit: int | None, batch_size: int) -> EvalResult:
    """Zero-shot multiple-choice scores on a seeded subset of `limit` items per task."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = {name: load(name, data_dir) for name in task_names}
    subsets = {name: idx for name, task in tasks.items() if (idx := eval_subset(task, limit)) is not None}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)  # simple_evaluate ignores batch_size for objects
    if os.environ.get("TQDM_DISABLE") == "1":  # a sweep's worker: the driver's bar is the display
        # lm-eval passes its bars disable=False explicitly, which tqdm's TQDM_DISABLE default cannot override
        for request_type in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
            setattr(lm, request_type, functools.partial(getattr(lm, request_type), disable_tqdm=True))
    # The tasks are built already: an empty TaskManager, not lm-eval's default, which indexes
    # every YAML lm-eval ships at each call (README, Measured).
    out = simple_evaluate(
        model=lm, tasks=list(tasks.values()), samples=subsets or None, log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_defaults=False),
    )
    metrics = {
        name: {key.split(",")[0]: float(value) for key, value in out["results"][name].items() if key.split(",")[0] in ("acc", "acc_norm")}
        for name in tasks
    }
    samples = {name: [_item(task, s) for s in out["samples"][name]] for name, task in tasks.items()}
    raw = {k: out[k] for k in ("results", "versions", "n-samples", "configs") if k in out}
    inputs = {name: [_input(task, s) for s in sorted(out["samples"][name], key=lambda s: int(s["doc_id"]))] for name, task in tasks.items()}
    return EvalResult(metrics, samples, raw, inputs)


def _item(task, sample: dict) -> dict:
    """One scored item, small enough to keep for every cell."""
    logliks = [float(r[0]) for r in sample["filtered_resps"]]
    return {
        "doc_id": int(sample["doc_id"]),
        "gold": gold_index(task, sample["doc"]),
        "pred": max(range(len(logliks)), key=logliks.__getitem__),
        "acc": float(sample["acc"]),
        **({"acc_norm": float(sample["acc_norm"])} if "acc_norm" in sample else {}),
    }


def _input(task, sample: dict) -> dict:
    """One scored item as lm-eval scored it: every (context, continuation) request and the gold index."""
    return {"doc_id": int(sample["doc_id"]), "text": json.dumps(sample["arguments"], ensure_ascii=False, default=str), "gold": gold_index(task, sample["doc"])}


class MultipleChoice(Family):
    title = "commonsense"
    raw_artifact = "eval/lm_eval_results.json"
    average_metric = "avg/acc"
    takes_encoders = False

    def tasks(self) -> tuple[str, ...]:
        return COMMONSENSE

    def headline(self, task: str) -> str:
        return "acc"

    def check(self, regime: Regime, scored: list[str], data: Path | None) -> None:
        for name in regime.tasks:
            if data is not None and not has_training_split(name):
                raise TaskError(f"{name!r} has no train split in {data}, so it cannot be trained on (it can be scored)")

    def cells(self, regime: Regime, scored: list[str]) -> list[tuple[Regime, list[str]]]:
        return [(regime, scored)]  # one model scores every task

    def num_labels(self, regime: Regime) -> int | None:
        return None

    def training_examples(self, regime: Regime, data: Path | None) -> list[tuple[str, str]]:
        n = None if regime.n_examples == "full" else regime.n_examples
        return training_examples(regime.tasks, n, regime.sample_seed, data)

    def example_rows(self, examples: list) -> list[dict]:
        return [{"context": context, "continuation": continuation} for context, continuation in examples]

    def encode(self, examples: list, tokenizer, max_len: int) -> list[dict]:
        return tokenize(examples, tokenizer, max_len)

    def evaluate(self, model, tokenizer, tasks: list[str], data: Path | None, args: EvalArgs, max_len: int) -> EvalResult:
        return evaluate(model, tokenizer, tasks, data, args.limit, args.batch_size)


FAMILY = MultipleChoice()

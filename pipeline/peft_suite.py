"""`python -m pipeline import-peft DIR`: a peft `method_comparison` suite folder as a sweep file.

The folder is laid out as peft's suite lays it: `default_training_params.json`, and one
`experiments/<method>/<name>/` per experiment holding its `adapter_config.json` (none: full
fine-tuning) and maybe a `training_params.json`, whose top-level keys replace the defaults'
(peft merges the two dicts one level deep: an `optimizer_kwargs` given replaces the default's
whole). Each experiment becomes one method row labelled `<method>/<name>`; the training
parameters that have a counterpart in `TrainArgs` become the sweep's `train` (the defaults') and
each row's `train` overrides (where its merged parameters differ). README (import-peft) lists the
mapping field by field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from adapters import catalog

DEFAULTS = "default_training_params.json"
PARAMS = "training_params.json"
CONFIG = "adapter_config.json"

# peft's TrainConfig.dtype -> TrainArgs.precision (int8/int4 load the base quantised: no counterpart)
PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Fields taken by something other than `train`: the backbone and the seeds come from the flags
# (the seed is their default), batch_size_eval is the sweep's eval batch size.
ELSEWHERE = {"model_id", "seed", "batch_size_eval"}


class SuiteError(ValueError):
    """A folder that is not a method_comparison suite, or a file in it that cannot be read. One line."""


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SuiteError(f"{path} is not JSON ({err})") from None
    if not isinstance(value, dict):
        raise SuiteError(f"{path}: expected a JSON object")
    return value


def train_args(params: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """(the TrainArgs fields that `params`, one experiment's merged training parameters, set;
    the names of the parameters that have no counterpart)."""
    train: dict[str, Any] = {}
    ignored = {k for k in params if k not in ELSEWHERE}
    optimizer = dict(params.get("optimizer_kwargs") or {})
    ignored.discard("optimizer_kwargs")
    if "lr" in optimizer:
        train["lr"] = optimizer.pop("lr")
    train["weight_decay"] = optimizer.pop("weight_decay", 0.01)  # torch's AdamW default, which peft's suite gets without one
    ignored |= {f"optimizer_kwargs.{k}" for k in optimizer}
    if params.get("optimizer_type", "AdamW") == "AdamW":  # the loop's own optimizer (betas 0.9, 0.999 as torch's default)
        ignored.discard("optimizer_type")
    simple = {"max_steps": "max_steps", "batch_size": "micro_batch_size", "max_seq_length": "max_seq_len",
              "use_gc": "gradient_checkpointing", "attn_implementation": "attn_implementation"}
    for key, field in simple.items():
        if key in params:
            train[field] = params[key]
            ignored.discard(key)
    if params.get("grad_norm_clip"):  # 0 means no clipping, which TrainArgs cannot say
        train["grad_clip"] = params["grad_norm_clip"]
        ignored.discard("grad_norm_clip")
    if "lr_scheduler" in params:  # peft: cosine after a warmup of 10% of the steps, or a constant lr
        cosine = params["lr_scheduler"] == "cosine"
        train.update(lr_scheduler="cosine" if cosine else "constant", warmup_ratio=0.1 if cosine else 0.0)
        ignored.discard("lr_scheduler")
    if params.get("dtype") in PRECISION:
        train["precision"] = PRECISION[params["dtype"]]
        ignored.discard("dtype")
    return train, ignored


def _method_row(label: str, folder: Path) -> dict[str, Any]:
    config = folder / CONFIG
    if not config.is_file():  # peft's suite: no adapter config means full fine-tuning
        return {"name": "full", "label": label}
    try:
        fields = catalog.peft_config_fields(_read(config))
    except catalog.MethodError as err:
        raise SuiteError(f"{config}: {err}") from None
    hparams = {k: [v] if isinstance(v, list) else v for k, v in fields.items()}  # a list value is a one-value grid
    return {"name": "peft", "label": label, "hparams": hparams}


def import_suite(directory: str | Path, backbone: str, tasks: list[str], seeds: list[int] | None,
                 n_examples: int | str, name: str | None = None, gpus: float = 0) -> tuple[dict[str, Any], list[str]]:
    """(the sweep, as the mapping a sweep file holds; the training parameters it ignores, sorted)."""
    directory = Path(directory).expanduser()
    if not (directory / DEFAULTS).is_file():
        raise SuiteError(f"{directory}: no {DEFAULTS} (not a peft method_comparison suite folder)")
    defaults = _read(directory / DEFAULTS)
    folders = sorted(p for p in (directory / "experiments").glob("*/*") if p.is_dir())
    if not folders:
        raise SuiteError(f"{directory}: no experiments/<method>/<name>/ folders")
    base, ignored = train_args(defaults)
    rows, suite_seeds = [], []
    for folder in folders:
        params = {**defaults, **(_read(folder / PARAMS) if (folder / PARAMS).is_file() else {})}
        train, skipped = train_args(params)
        ignored |= skipped | ({"batch_size_eval"} if params.get("batch_size_eval") != defaults.get("batch_size_eval") else set())
        row = _method_row(f"{folder.parent.name}/{folder.name}", folder)
        overrides = {k: v for k, v in train.items() if base.get(k) != v}
        if overrides:
            row["train"] = overrides
        rows.append(row)
        if "seed" in params and params["seed"] not in suite_seeds:
            suite_seeds.append(params["seed"])
    sweep = {
        "name": name or re.sub(r"[^A-Za-z0-9_.-]+", "-", directory.resolve().name),
        "backbones": [backbone],
        "methods": rows,
        "tasks": tasks,
        "regimes": [{"name": f"train-{n_examples}", "tasks": tasks, "n_examples": n_examples}],
        "seeds": seeds or sorted(suite_seeds) or [0],
        "train": base,
    }
    if "batch_size_eval" in defaults:
        sweep["eval"] = {"batch_size": defaults["batch_size_eval"]}
    if gpus:
        sweep["resources"] = {"gpus": gpus}
    return sweep, sorted(ignored)


def dump(sweep: dict[str, Any]) -> str:
    return yaml.safe_dump(sweep, sort_keys=False, allow_unicode=True)

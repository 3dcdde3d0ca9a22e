"""The cell contract: what the driver hands a worker, fully resolved, and nothing else.

A Cell is everything one job needs; its `run_key` is a stable hash of what determines the
result (method, hyperparameters, backbone, regime, seed, training and evaluation settings),
so the same cell always has the same key and a changed hyperparameter gives a new one.
Where a cell runs (its resources, how often it checkpoints), how its row is labelled and which
sweep named it do not change the result and are left out of the key, and so is a field added
later while it holds its default (`Strict.added_later`): existing keys stay valid. The sweep schema
(`pipeline.spec`) builds on these types; the worker (`jobs.cell`) needs nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

IGNORE = -100  # the `labels` value of a token row that the loss skips: prompt tokens and padding


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields added after stores held run_keys: left out of the key while at their default, so
    # every cell that does not use one keeps the key it had before the field existed.
    added_later: ClassVar[tuple[str, ...]] = ()
    # An added_later field whose default is resolved before a cell runs (precision `auto`): the
    # resolved value that does what every cell did before the field existed, left out instead.
    keyless_value: ClassVar[dict[str, Any]] = {}

    def key_content(self) -> dict[str, Any]:
        """What of this section determines a result: its fields, less `added_later` ones at their default."""
        content = self.model_dump()
        for name in self.added_later:
            if getattr(self, name) == self.keyless_value.get(name, type(self).model_fields[name].default):
                del content[name]
        return content


class TrainArgs(Strict):
    lr: PositiveFloat = 3e-4
    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = None  # overrides epochs when set
    micro_batch_size: PositiveInt = 8
    grad_accum: PositiveInt = 1
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: PositiveFloat = 1.0
    max_seq_len: PositiveInt = 512
    zero_stage: Literal[0, 1, 2, 3] = 2
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"  # after warmup_ratio's linear warmup
    # auto: bf16 for a cell with GPUs, fp32 for a CPU cell (resolved when the Cell is made, see Cell)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward (non-reentrant)
    # None: transformers' choice for the architecture (sdpa where it has it), what every cell used before
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = None
    deepspeed: dict[str, Any] = {}  # merged into the generated DeepSpeed config (offload, bucket sizes, ...)

    added_later = ("lr_scheduler", "precision", "gradient_checkpointing", "attn_implementation", "deepspeed")
    keyless_value = {"precision": "fp32"}  # cells before `precision` trained in float32


class EvalArgs(Strict):
    limit: PositiveInt | None = None  # items per task, a seeded random subset; None = all
    batch_size: PositiveInt | Literal["auto"] = 8  # auto: the largest that fits (lm-eval's detection)


class Regime(Strict):
    """Training data: `n_examples` drawn deterministically from the train splits of `tasks`."""

    name: str
    tasks: list[str] = Field(min_length=1)
    n_examples: PositiveInt | Literal["full"]
    sample_seed: int = 0


class Resources(Strict):
    """What one cell asks of the cluster: `processes` DeepSpeed ranks, each with `cpus` and `gpus`."""

    cpus: PositiveFloat = 1
    gpus: float = Field(0, ge=0)
    processes: PositiveInt = 1


class Cell(Strict):
    """One training job, fully resolved."""

    sweep: str
    method: str
    label: str
    hparams: dict[str, Any]
    backbone: str
    regime: Regime
    seed: int
    train: TrainArgs
    eval: EvalArgs
    tasks: list[str]
    resources: Resources
    checkpoint_every: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _resolve_precision(cls, raw: Any) -> Any:
        """`precision: auto` becomes what the cell's resources run: bf16 with GPUs, fp32 on CPU.
        Resolved here, where every Cell is made (spec, tests, a CELL.json), so a Cell never holds
        auto and its run_key says what it ran: a CPU cell's fp32 is left out (its key is the one it
        had before the field existed), a GPU cell's bf16 is in (a finished CPU cell cannot stand in)."""
        if not isinstance(raw, dict) or raw.get("train") is None or raw.get("resources") is None:
            return raw  # (pydantic names what is missing)
        train = raw["train"] if isinstance(raw["train"], TrainArgs) else TrainArgs.model_validate(raw["train"])
        if train.precision != "auto":
            return raw
        resources = raw["resources"]
        gpus = resources.gpus if isinstance(resources, Resources) else Resources.model_validate(resources).gpus
        return {**raw, "train": train.model_copy(update={"precision": "bf16" if gpus > 0 else "fp32"})}

    @functools.cached_property
    def run_key(self) -> str:
        content = self.model_dump(exclude={"sweep", "resources", "label", "checkpoint_every"})
        content.update({name: getattr(self, name).key_content() for name in ("train", "eval", "regime")})
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def params(self) -> dict[str, str]:
        """Flat `section.key -> value` strings, for MLflow params."""
        flat: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                flat[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

        walk("", self.model_dump())
        return flat


def row_label(name: str, shown: dict[str, Any]) -> str:
    """A table row's name: the method (or its label) and the hyperparameters that tell it apart,
    `lora(r=8)`; a name that already shows some (`lora(r=8)`) gets the others inside its brackets.
    The one place rows are named: sweep grids, tables and figures all use it."""
    if not shown:
        return name
    inner = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{name[:-1]}, {inner})" if name.endswith(")") and "(" in name else f"{name}({inner})"


@dataclass
class JobResult:
    """What a cell returns to the driver: its run, how it ended, its metrics or its error."""

    run_key: str
    status: str  # FINISHED or FAILED
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

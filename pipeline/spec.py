"""Sweep files: validated once at the door (pydantic), expanded into fully resolved Cells.

A Cell is everything one job needs; its `run_key` is a stable hash of what determines the
result (method, hyperparameters, backbone, regime, seed, training and evaluation settings),
so the same cell always has the same key and a changed hyperparameter gives a new one.
Where a cell runs (its resources) and which sweep named it do not change the result and are
left out of the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """A sweep file that is malformed or names something that does not exist. One line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class EvalArgs(Strict):
    limit: PositiveInt | None = None  # items per task, a seeded random subset; None = all
    batch_size: PositiveInt = 8


class Regime(Strict):
    """Training data: `n_examples` drawn deterministically from the train splits of `tasks`."""

    name: str
    tasks: list[str] = Field(min_length=1)
    n_examples: PositiveInt | Literal["full"]
    sample_seed: int = 0


class Resources(Strict):
    cpus: PositiveFloat = 1
    gpus: float = Field(0, ge=0)


class MethodSpec(Strict):
    name: str
    label: str | None = None  # how the row is named in tables; defaults to `name`
    hparams: dict[str, Any] = {}
    train: dict[str, Any] = {}  # overrides of the sweep's training arguments for this method

    @property
    def row(self) -> str:
        return self.label or self.name


class Sweep(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    backbones: list[str] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)  # what every cell is scored on
    regimes: list[Regime] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    train: TrainArgs = TrainArgs()
    eval: EvalArgs = EvalArgs()
    resources: Resources = Resources()

    @field_validator("backbones", "tasks", "seeds")
    @classmethod
    def _unique(cls, values: list) -> list:
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"duplicate entries: {', '.join(dupes)}")
        return values

    @model_validator(mode="after")
    def _unique_names(self) -> "Sweep":
        for what, names in (("method", [m.row for m in self.methods]), ("regime", [r.name for r in self.regimes])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} names: {', '.join(dupes)} (give one a `label`)")
        return self


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

    @property
    def run_key(self) -> str:
        content = self.model_dump(exclude={"sweep", "resources", "label"})
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


def method_train_args(sweep: Sweep, method: MethodSpec) -> TrainArgs:
    """The sweep's training arguments with the method's overrides, validated."""
    return TrainArgs.model_validate({**sweep.train.model_dump(), **method.train})


def expand(sweep: Sweep) -> list[Cell]:
    """Every backbone × method × regime × seed, with per-method training overrides applied."""
    cells = []
    for backbone, method, regime, seed in itertools.product(sweep.backbones, sweep.methods, sweep.regimes, sweep.seeds):
        cells.append(
            Cell(
                sweep=sweep.name,
                method=method.name,
                label=method.row,
                hparams=method.hparams,
                backbone=backbone,
                regime=regime,
                seed=seed,
                train=method_train_args(sweep, method),
                eval=sweep.eval,
                tasks=sweep.tasks,
                resources=sweep.resources,
            )
        )
    return cells


def load(path: str | Path) -> Sweep:
    """Parse and check a sweep file; raise SpecError with one line naming what is wrong."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} malformed YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    try:
        sweep = Sweep.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "sweep"
        raise SpecError(f"{path}: {where}: {first['msg']}") from None
    _check_names(path, sweep)
    return sweep


def _check_names(path: Path, sweep: Sweep) -> None:
    """Everything the spec names exists: methods and their hyperparameters, backbones, tasks."""
    import adapters
    from jobs import backbones, tasks

    for i, method in enumerate(sweep.methods):
        try:
            adapters.registry.check(method.name, method.hparams)
        except adapters.MethodError as err:
            raise SpecError(f"{path}: methods.{i}: {err}") from None
        try:
            method_train_args(sweep, method)
        except ValidationError as err:
            first = err.errors()[0]
            raise SpecError(f"{path}: methods.{i}.train.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    for i, name in enumerate(sweep.backbones):
        if not backbones.is_known(name):
            raise SpecError(f"{path}: backbones.{i}: unknown backbone {name!r} (registered: {', '.join(backbones.REGISTERED)}; or a hub id / local path)")
    try:
        data = tasks.data_dir()
    except tasks.TaskError as err:
        raise SpecError(f"{path}: {err}") from None
    for where, names in [("tasks", sweep.tasks)] + [(f"regimes.{i}.tasks", r.tasks) for i, r in enumerate(sweep.regimes)]:
        for j, name in enumerate(names):
            if name not in tasks.names():
                raise SpecError(f"{path}: {where}.{j}: unknown task {name!r} (known: {', '.join(tasks.names())})")
    for i, regime in enumerate(sweep.regimes):
        for name in regime.tasks:
            if data is not None and not tasks.has_training_split(name):
                raise SpecError(f"{path}: regimes.{i}.tasks: {name!r} has no train split in {data}")

"""Sweep files: validated once at the door (pydantic), expanded into fully resolved Cells.

A Cell is everything one job needs; its `run_key` is a stable hash of what determines the
result (method, hyperparameters, backbone, regime, seed, training and evaluation settings),
so the same cell always has the same key and a changed hyperparameter gives a new one.
Where a cell runs (its resources, how often it checkpoints) and which sweep named it do not
change the result and are left out of the key.

Hyperparameter grids: a list value in a method's `hparams` is a grid axis, and the method
expands into one row per combination, labelled `lora(r=8)` by the values that vary. A
hyperparameter that itself takes a list is written as a one-value grid: `[[q_proj, v_proj]]`.
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
    """What one cell asks of the cluster: `processes` DeepSpeed ranks, each with `cpus` and `gpus`."""

    cpus: PositiveFloat = 1
    gpus: float = Field(0, ge=0)
    processes: PositiveInt = 1


class NodeSpec(Strict):
    """`count` nodes of `cpus` CPUs and `gpus` GPUs each."""

    cpus: PositiveFloat
    gpus: float = Field(0, ge=0)
    count: PositiveInt = 1


class ClusterSpec(Strict):
    """The cluster a sweep is planned for when no live one is named: `plan` packs the cells onto it."""

    nodes: list[NodeSpec] = Field(min_length=1)

    def totals(self) -> list[dict[str, float]]:
        return [{"CPU": n.cpus, "GPU": n.gpus} for n in self.nodes for _ in range(n.count)]


class MethodSpec(Strict):
    name: str
    label: str | None = None  # how the row is named in tables; defaults to `name`
    hparams: dict[str, Any] = {}
    train: dict[str, Any] = {}  # overrides of the sweep's training arguments for this method

    @property
    def row(self) -> str:
        return self.label or self.name

    @field_validator("hparams")
    @classmethod
    def _grids_are_not_empty(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        for key, value in hparams.items():
            if value == []:
                raise ValueError(f"{key}: empty grid (give at least one value)")
        return hparams

    def grid(self) -> list[tuple[str, dict[str, Any]]]:
        """(row label, hyperparameters) for every combination of the list-valued hparams."""
        axes = {k: v for k, v in self.hparams.items() if isinstance(v, list)}
        rows = []
        for values in itertools.product(*axes.values()):
            chosen = dict(zip(axes, values))
            varying = ", ".join(f"{k}={v}" for k, v in chosen.items() if len(axes[k]) > 1)
            rows.append((f"{self.row}({varying})" if varying else self.row, {**self.hparams, **chosen}))
        return rows


class BackboneSpec(Strict):
    """A backbone with its own training overrides and resources (a bigger model, a smaller batch)."""

    name: str
    train: dict[str, Any] = {}
    resources: Resources | None = None


class Sweep(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    backbones: list[str | BackboneSpec] = Field(min_length=1)  # a name, or {name, train, resources}
    methods: list[MethodSpec] = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)  # what every cell is scored on
    regimes: list[Regime] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    train: TrainArgs = TrainArgs()
    eval: EvalArgs = EvalArgs()
    resources: Resources = Resources()
    checkpoint_every: PositiveInt | None = None  # optimizer steps between checkpoints; None = never
    max_retries: int = Field(1, ge=0)  # extra attempts for a cell that fails or whose worker dies
    max_concurrent: PositiveInt | None = None  # cells in flight at once; None = as many as fit
    cluster: ClusterSpec | None = None  # for `plan` and `validate` without --address

    @field_validator("backbones")
    @classmethod
    def _named(cls, values: list) -> list[BackboneSpec]:
        return [BackboneSpec(name=v) if isinstance(v, str) else v for v in values]

    @field_validator("tasks", "seeds")
    @classmethod
    def _unique(cls, values: list) -> list:
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"duplicate entries: {', '.join(dupes)}")
        return values

    @model_validator(mode="after")
    def _unique_names(self) -> "Sweep":
        rows = [label for m in self.methods for label, _ in m.grid()]
        for what, names in (("method", rows), ("regime", [r.name for r in self.regimes]), ("backbone", [b.name for b in self.backbones])):
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
    checkpoint_every: PositiveInt | None = None

    @property
    def run_key(self) -> str:
        content = self.model_dump(exclude={"sweep", "resources", "label", "checkpoint_every"})
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


def train_args(sweep: Sweep, backbone: BackboneSpec, method: MethodSpec) -> TrainArgs:
    """The sweep's training arguments, then the backbone's overrides, then the method's; validated."""
    return TrainArgs.model_validate({**sweep.train.model_dump(), **backbone.train, **method.train})


def expand(sweep: Sweep) -> list[Cell]:
    """Every backbone × method (× its grid) × regime × seed, with training overrides applied.

    A GLUE regime trains one model per task (each task has its own head): it expands into one
    cell per task, under the regime's name (one table block), scored on the sweep's tasks that
    share the task's label space (RTE's head also scores QNLI).
    """
    rows = [(method, label, hparams) for method in sweep.methods for label, hparams in method.grid()]
    cells = []
    for backbone, (method, label, hparams), (regime, scored), seed in itertools.product(sweep.backbones, rows, _trained(sweep), sweep.seeds):
        cells.append(
            Cell(
                sweep=sweep.name,
                method=method.name,
                label=label,
                hparams=hparams,
                backbone=backbone.name,
                regime=regime,
                seed=seed,
                train=train_args(sweep, backbone, method),
                eval=sweep.eval,
                tasks=scored,
                resources=backbone.resources or sweep.resources,
                checkpoint_every=sweep.checkpoint_every,
            )
        )
    return cells


def _trained(sweep: Sweep) -> list[tuple[Regime, list[str]]]:
    """(the regime a cell trains on, the tasks it is scored on) for every cell of a backbone × method × seed."""
    from jobs import glue

    out = []
    for regime in sweep.regimes:
        if not glue.is_glue(regime.tasks[0]):
            out.append((regime, sweep.tasks))
            continue
        out += [(regime.model_copy(update={"tasks": [t]}), glue.scored_with(t, sweep.tasks)) for t in regime.tasks]
    return out


def check_resources(path: str | Path, sweep: Sweep, nodes: list[dict[str, float]], where: str) -> None:
    """Raise SpecError if some cell asks for more than one node of the cluster has.

    `nodes` are the CPU/GPU totals of each node. All of a cell's ranks run on one node (the
    scheduler places them STRICT_PACK: NCCL within a node, no cell spread over the network),
    so a cell that no single node can hold would wait forever: reject it here instead.
    """
    for i, backbone in enumerate(sweep.backbones):
        res = backbone.resources or sweep.resources
        field = f"backbones.{i}.resources" if backbone.resources else "resources"
        cpus, gpus = res.cpus * res.processes, res.gpus * res.processes
        if not any(fits(n, cpus, gpus) for n in nodes):
            biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
            ranks = f"{res.processes} processes × " if res.processes > 1 else ""
            raise SpecError(
                f"{path}: {field}: no node of {where} has {ranks}{res.cpus:g} CPUs and {ranks}{res.gpus:g} GPUs for one cell "
                f"(largest: {biggest.get('CPU', 0):g} CPUs, {biggest.get('GPU', 0):g} GPUs)"
            )


def fits(node: dict[str, float], cpus: float, gpus: float) -> bool:
    return node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus


def load(path: str | Path) -> Sweep:
    """Parse and check a sweep file; raise SpecError with one line naming what is wrong."""
    return _check(Path(path), _documents(Path(path), single=True)[0])


def load_all(path: str | Path) -> list[Sweep]:
    """The sweeps of a file of one or more YAML documents (`---` between them), each checked.

    One sweep cannot mix GLUE and commonsense tasks, so a suite that needs both (the nightly)
    is several sweeps in one file: one experiment, one parent run per invocation. The
    sweep-wide settings (name, max_retries, max_concurrent) must therefore agree.
    """
    path = Path(path)
    sweeps = [_check(path, raw) for raw in _documents(path, single=False)]
    for key in ("name", "max_retries", "max_concurrent"):
        values = [getattr(s, key) for s in sweeps]
        if len(set(values)) > 1:
            raise SpecError(f"{path}: {key}: every document of one file runs as one sweep, so they need the same {key}, got {', '.join(map(str, values))}")
    return sweeps


def expand_all(sweeps: list[Sweep]) -> list[Cell]:
    """The cells of every sweep of one file, in file order."""
    return [cell for sweep in sweeps for cell in expand(sweep)]


def _documents(path: Path, single: bool) -> list:
    try:
        text = path.read_text()
        docs = [yaml.safe_load(text)] if single else [d for d in yaml.safe_load_all(text) if d is not None]
    except (FileNotFoundError, IsADirectoryError):
        raise SpecError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} malformed YAML: {getattr(err, 'problem', err)}") from None
    return docs or [None]


def _check(path: Path, raw) -> Sweep:
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
    from jobs import backbones, glue, tasks

    for i, method in enumerate(sweep.methods):
        try:
            adapters.registry.check(method.name, method.hparams)
        except adapters.MethodError as err:
            raise SpecError(f"{path}: methods.{i}: {err}") from None
        defaults = adapters.hyperparameters(method.name)
        for _, hparams in method.grid():
            for key, value in hparams.items():
                if _is_count(defaults[key]) and not _is_count(value):
                    raise SpecError(f"{path}: methods.{i}.hparams.{key}: must be a positive integer, got {value!r}")
        for where, overrides in ((f"methods.{i}.train", method.train),) + tuple((f"backbones.{j}.train", b.train) for j, b in enumerate(sweep.backbones)):
            try:
                TrainArgs.model_validate({**sweep.train.model_dump(), **overrides})
            except ValidationError as err:
                first = err.errors()[0]
                raise SpecError(f"{path}: {where}.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    for i, name in enumerate(b.name for b in sweep.backbones):
        if not backbones.is_known(name):
            raise SpecError(f"{path}: backbones.{i}: unknown backbone {name!r} (registered: {', '.join(backbones.REGISTERED)}; or a hub id / local path)")
    try:
        data = tasks.data_dir()
    except tasks.TaskError as err:
        raise SpecError(f"{path}: {err}") from None
    known = tasks.names() + glue.names()
    for where, names in [("tasks", sweep.tasks)] + [(f"regimes.{i}.tasks", r.tasks) for i, r in enumerate(sweep.regimes)]:
        for j, name in enumerate(names):
            if name not in known:
                raise SpecError(f"{path}: {where}.{j}: unknown task {name!r} (known: {', '.join(known)})")
    n_glue = sum(map(glue.is_glue, sweep.tasks + [t for r in sweep.regimes for t in r.tasks]))
    if 0 < n_glue < len(sweep.tasks) + sum(len(r.tasks) for r in sweep.regimes):
        raise SpecError(f"{path}: tasks: GLUE and commonsense tasks cannot share a sweep (a classifier head vs lm-eval scoring)")
    for i, regime in enumerate(sweep.regimes):
        for name in regime.tasks:
            if data is not None and not (glue.has_split(name, "train", data) if glue.is_glue(name) else tasks.has_training_split(name)):
                raise SpecError(f"{path}: regimes.{i}.tasks: {name!r} has no train split in {data}, so it cannot be trained on (it can be scored)")
            if glue.is_glue(name) and not glue.scored_with(name, sweep.tasks):
                raise SpecError(f"{path}: regimes.{i}.tasks: a head trained on {name!r} scores none of `tasks` (add {name} to tasks)")
    if not n_glue:
        for i, backbone in enumerate(sweep.backbones):
            if backbone.name in backbones.ENCODERS:
                raise SpecError(f"{path}: backbones.{i}: {backbone.name!r} is an encoder: it trains and scores GLUE tasks only")


def _is_count(value: Any) -> bool:
    """A positive integer (not a bool). Hyperparameters with such defaults are ranks, sizes and
    counts, where zero or a negative value is a mistake."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0

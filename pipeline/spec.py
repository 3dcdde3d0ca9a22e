"""Sweep files: validated once at the door (pydantic), expanded into fully resolved Cells
(`jobs.contract.Cell`, the worker's input, with its run_key).

Hyperparameter grids: a list value in a method's `hparams` is a grid axis, and the method
expands into one row per combination, labelled `lora(r=8)` by the values that vary. A
hyperparameter that itself takes a list is written as a one-value grid: `[[q_proj, v_proj]]`.

A `peft` row runs any peft config: `hparams: {peft_type: LOKR, r: 8}`, or `config:` naming an
adapter_config.json whose fields become its hparams (under those `hparams` gives). Without a
`label` it is named by its peft type and the fields in which it differs from the sweep's other
rows of that type: `lokr`, `loha(r=8)`, `loha(r=16)`.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

from adapters import catalog
from jobs import backbones, families
from jobs.contract import Cell, EvalArgs, Regime, Resources, Strict, TrainArgs, row_label
from pipeline import cluster


class SpecError(ValueError):
    """A sweep file that is malformed or names something that does not exist. One line."""


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
    config: str | None = None  # `peft` rows: a saved adapter_config.json, read into `hparams`

    @model_validator(mode="before")
    @classmethod
    def _read_peft_config(cls, raw: Any) -> Any:
        """`config:` read once here, so a cell carries the fields themselves (its run_key follows
        the file's content, not its path). A list value becomes a one-value grid."""
        if not isinstance(raw, dict) or raw.get("config") is None:
            return raw
        if raw.get("name") != "peft":
            raise ValueError("config: only a `peft` row reads a peft config file")
        path = Path(raw["config"]).expanduser()
        try:
            saved = json.loads(path.read_text())
        except (FileNotFoundError, IsADirectoryError):
            raise ValueError(f"config: no such file {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"config: {path} is not JSON ({err})") from None
        try:
            fields = catalog.peft_config_fields(saved)
        except catalog.MethodError as err:
            raise ValueError(f"config: {path}: {err}") from None
        fields = {k: [v] if isinstance(v, list) else v for k, v in fields.items()}
        return {**raw, "hparams": {**fields, **raw.get("hparams", {})}}

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
            rows.append((row_label(self.row, {k: v for k, v in chosen.items() if len(axes[k]) > 1}), {**self.hparams, **chosen}))
        return rows


class BackboneSpec(Strict):
    """A backbone with its own training overrides and resources (a bigger model, a smaller batch)."""

    name: str
    train: dict[str, Any] = {}
    resources: Resources | None = None


class GateSpec(Strict):
    """The nightly gate's settings (pipeline.nightly): how many earlier nights, the margin, the reference."""

    nights: PositiveInt = 10  # earlier accepted nights whose runs tonight is compared with
    margin: float = Field(0.0, ge=0)  # points tonight may fall below them before it is a regression
    alpha: float = Field(0.05, gt=0, lt=1)  # family-wise, Holm over the night's comparisons
    reference: str = "lora"  # throughput and memory are ratios to this method's, measured the same night


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
    gate: GateSpec | None = None  # `pipeline nightly` only: how tonight is compared with earlier nights

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
        rows = [label for _, label, _ in method_rows(self.methods)]
        for what, names in (("method", rows), ("regime", [r.name for r in self.regimes]), ("backbone", [b.name for b in self.backbones])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} names: {', '.join(dupes)} (give one a `label`)")
        return self


def method_rows(methods: list[MethodSpec]) -> list[tuple[MethodSpec, str, dict[str, Any]]]:
    """(method, row label, hyperparameters) of every grid row of `methods`. A `peft` row without
    a label is named by its peft type and the fields that differ among the unlabelled rows of
    that type."""
    rows = [(m, label, hparams) for m in methods for label, hparams in m.grid()]
    by_type: dict[str, list[int]] = {}
    for i, (m, _, hparams) in enumerate(rows):
        if m.name == "peft" and m.label is None:
            by_type.setdefault(str(hparams.get("peft_type") or "peft").lower(), []).append(i)
    for name, members in by_type.items():
        try:
            defaults = catalog.peft_defaults(name)  # what a row that leaves a field out gets
        except catalog.MethodError:
            defaults = {}  # not a peft type: validation names it
        keys = sorted({k for i in members for k in rows[i][2]} - {"peft_type"})
        value = {i: {k: rows[i][2].get(k, defaults.get(k)) for k in keys} for i in members}
        differ = [k for k in keys if len({json.dumps(value[i][k], sort_keys=True, default=str) for i in members}) > 1]
        for i in members:
            m, _, hparams = rows[i]
            rows[i] = (m, row_label(name, {k: value[i][k] for k in differ}), hparams)
    return rows


def train_args(sweep: Sweep, backbone: BackboneSpec, method: MethodSpec) -> TrainArgs:
    """The sweep's training arguments, then the backbone's overrides, then the method's; validated."""
    return TrainArgs.model_validate({**sweep.train.model_dump(), **backbone.train, **method.train})


def expand(sweep: Sweep) -> list[Cell]:
    """Every backbone × method (× its grid) × regime's cells × seed, with training overrides
    applied. How a regime maps to cells is its task family's (GLUE: one cell per task, each with
    its own head, under the regime's name)."""
    rows = method_rows(sweep.methods)
    trained = [cell for regime in sweep.regimes for cell in families.of_regime(regime).cells(regime, sweep.tasks)]
    cells = []
    for backbone, (method, label, hparams), (regime, scored), seed in itertools.product(sweep.backbones, rows, trained, sweep.seeds):
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
        if not any(cluster.fits(n, cpus, gpus) for n in nodes):
            biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
            ranks = f"{res.processes} processes × " if res.processes > 1 else ""
            raise SpecError(
                f"{path}: {field}: no node of {where} has {ranks}{res.cpus:g} CPUs and {ranks}{res.gpus:g} GPUs for one cell "
                f"(largest: {biggest.get('CPU', 0):g} CPUs, {biggest.get('GPU', 0):g} GPUs)"
            )


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
    """Everything the spec names exists and can run: methods and their hyperparameters (every
    check a builder would make), backbones, tasks and what their families need."""
    for i, method in enumerate(sweep.methods):
        _check_method(path, f"methods.{i}", method, sweep.backbones)
        for where, overrides in ((f"methods.{i}.train", method.train),) + tuple((f"backbones.{j}.train", b.train) for j, b in enumerate(sweep.backbones)):
            try:
                TrainArgs.model_validate({**sweep.train.model_dump(), **overrides})
            except ValidationError as err:
                first = err.errors()[0]
                raise SpecError(f"{path}: {where}.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    for backbone in sweep.backbones:
        for method in sweep.methods:
            _check_train(path, sweep, backbone, method)
    for i, name in enumerate(b.name for b in sweep.backbones):
        if not backbones.is_known(name):
            raise SpecError(f"{path}: backbones.{i}: unknown backbone {name!r} (registered: {', '.join(backbones.REGISTERED)}; or a hub id / local path)")
    try:
        data = families.data_dir()
    except families.TaskError as err:
        raise SpecError(f"{path}: {err}") from None
    for where, names in [("tasks", sweep.tasks)] + [(f"regimes.{i}.tasks", r.tasks) for i, r in enumerate(sweep.regimes)]:
        for j, name in enumerate(names):
            try:
                families.of(name)
            except families.TaskError as err:
                raise SpecError(f"{path}: {where}.{j}: {err}") from None
    used = {families.of(t) for t in sweep.tasks + [t for r in sweep.regimes for t in r.tasks]}
    if len(used) > 1:
        titles = " and ".join(sorted((f.title for f in used), key=lambda t: t != "GLUE"))
        raise SpecError(f"{path}: tasks: {titles} tasks cannot share a sweep (each family trains and scores its own way)")
    [family] = used
    for i, regime in enumerate(sweep.regimes):
        try:
            family.check(regime, sweep.tasks, data)
        except families.TaskError as err:
            raise SpecError(f"{path}: regimes.{i}.tasks: {err}") from None
    if not family.takes_encoders:
        for i, backbone in enumerate(sweep.backbones):
            if backbone.name in backbones.ENCODERS:
                takers = ", ".join(f.title for f in families.families() if f.takes_encoders)
                raise SpecError(f"{path}: backbones.{i}: {backbone.name!r} is an encoder: it trains and scores {takers} tasks only")


# DeepSpeed settings the sweep's own fields set: a `train.deepspeed` that named them would contradict them.
OWNED_DEEPSPEED = {
    "train_batch_size": "micro_batch_size and grad_accum", "train_micro_batch_size_per_gpu": "micro_batch_size",
    "gradient_accumulation_steps": "grad_accum", "gradient_clipping": "grad_clip", "optimizer": "the method's optimizer",
    "scheduler": "lr_scheduler", "bf16": "precision", "fp16": "precision", "torch_autocast": "precision",
}


def _check_train(path: Path, sweep: Sweep, backbone: BackboneSpec, method: MethodSpec) -> None:
    """A backbone × method's training settings can run where its cells run: fp16 only on GPUs
    (CPUs have no fp16 matrix kernels DeepSpeed trains with), no ZeRO-3 (its partitioned
    parameters would need gathering for the adapters' ZeRO hooks, evaluation, merge, diagnostics
    and saving, which the cell does not do), no DeepSpeed setting that a sweep field owns."""
    args = train_args(sweep, backbone, method)
    resources = backbone.resources or sweep.resources

    def where(key: str) -> str:
        if key in method.train:
            return f"methods.{sweep.methods.index(method)}.train.{key}"
        if key in backbone.train:
            return f"backbones.{sweep.backbones.index(backbone)}.train.{key}"
        return f"train.{key}"

    if args.precision == "fp16" and resources.gpus == 0:
        raise SpecError(f"{path}: {where('precision')}: fp16 needs GPUs and {backbone.name}'s cells have none (resources.gpus: 0); use bf16 or fp32 on CPU")
    stage = args.deepspeed.get("zero_optimization", {}).get("stage", args.zero_stage)
    if stage == 3:
        key = "deepspeed" if "stage" in args.deepspeed.get("zero_optimization", {}) else "zero_stage"
        raise SpecError(f"{path}: {where(key)}: ZeRO stage 3 is not supported (evaluation, merge, diagnostics, saving and the adapters' ZeRO hooks need whole parameters); use 0, 1 or 2, with train.deepspeed offload for memory")
    for key in args.deepspeed:
        if key in OWNED_DEEPSPEED:
            raise SpecError(f"{path}: {where('deepspeed')}.{key}: set by the sweep's {OWNED_DEEPSPEED[key]}, not in train.deepspeed")


def _check_method(path: Path, where: str, method: MethodSpec, used_backbones: list[BackboneSpec]) -> None:
    """Every grid row's hyperparameters resolve (types, ranges, choices, relations), and the
    modules they name exist in each backbone whose layout can be read without loading it."""
    for _, hparams in method.grid():
        try:
            values = catalog.resolve(method.name, hparams)
        except catalog.HparamError as err:
            raise SpecError(f"{path}: {where}.hparams.{err.key}: {err.detail}") from None
        except catalog.MethodError as err:
            raise SpecError(f"{path}: {where}: {err}") from None
        for key in ("target_modules", "feedforward_modules"):
            names = values.get(key)
            if isinstance(names, str) and names != "all-linear" and re.fullmatch(r"[\w.]+", names):
                names = [names]  # a plain name (a grid of one list value in YAML), not a pattern
            if not isinstance(names, (list, tuple)):
                continue  # "all-linear", a regex or peft's default: peft resolves it
            for backbone in used_backbones:
                modules = backbones.linear_modules(backbone.name)
                missing = [n for n in names if modules and not any(m == n or m.endswith("." + n) or n.endswith("." + m) for m in modules)]
                if missing:
                    raise SpecError(f"{path}: {where}.hparams.{key}: {backbone.name} has no linear module {missing[0]!r} "
                                    f"(it has: {', '.join(m.rpartition('.')[2] for m in modules)})")

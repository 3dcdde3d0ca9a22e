"""Every method's hyperparameters as data: names, kinds, defaults, help, and the checks on them.

This is what `validate` reads (no torch import), what `adapters.apply` resolves hyperparameters
with before any builder runs, and what `describe` prints. A method's builder lives in the family
module named by `Method.module`; `registry.register` checks that the builder takes exactly the
hyperparameters declared here, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


class MethodError(ValueError):
    """An unknown method name or an invalid hyperparameter. One line."""


class HparamError(MethodError):
    """A hyperparameter value a method cannot take: `key` names it, `detail` says what is wrong."""

    def __init__(self, method: str, key: str, detail: str):
        super().__init__(f"method {method!r}: {key} {detail}")
        self.key, self.detail = key, detail


# What a kind of hyperparameter accepts: (test, what it must be).
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "count": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "index": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "positive": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a probability in [0, 1)"),
    "fraction": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "name": (lambda v: isinstance(v, str) and bool(v), "a name"),
    "modules": (lambda v: isinstance(v, str) or (isinstance(v, (list, tuple)) and v and all(isinstance(m, str) for m in v)),
                "a module name pattern or a list of module names"),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Hparam:
    name: str
    kind: str  # a key of KINDS, or "choice"
    default: Any
    help: str
    choices: tuple = ()  # for kind "choice"
    optional: bool = False  # None is allowed (and means what `help` says)

    def check(self, method: str, value) -> None:
        if value is None and self.optional:
            return
        if self.kind == "choice":
            if value not in self.choices:
                raise HparamError(method, self.name, f"must be one of {', '.join(map(str, self.choices))}, got {value!r}")
            return
        test, what = KINDS[self.kind]
        if not test(value):
            raise HparamError(method, self.name, f"must be {what}, got {value!r}")


@dataclass(frozen=True)
class Method:
    name: str
    module: str  # the adapters module whose builder applies it
    summary: str
    hparams: tuple[Hparam, ...] = ()
    rules: tuple[Callable[[dict], tuple[str, str] | None], ...] = ()  # relations between values: (key, detail) when broken
    # Checks hyperparameters beyond the declared ones (HparamError if they are wrong): a method
    # with one takes any others, its builder takes them as **kwargs (`peft`: any peft config's fields).
    open_fields: Callable[[dict], None] | None = None

    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hparams}

    def resolve(self, given: dict) -> dict[str, Any]:
        """The defaults overridden by `given`, every value and relation checked; MethodError if not."""
        known = self.defaults()
        for key in given:
            if key not in known and self.open_fields is None:
                raise MethodError(f"method {self.name!r} has no hyperparameter {key!r} (it takes: {', '.join(known) or 'none'})")
        values = {**known, **given}
        for h in self.hparams:
            h.check(self.name, values[h.name])
        for rule in self.rules:
            broken = rule(values)
            if broken:
                raise HparamError(self.name, *broken)
        if self.open_fields is not None:
            self.open_fields(values)
        return values


# Shared declarations: the LoRA core most LoRA-shaped methods take.
def _r(default: int = 8, help: str = "rank of B·A") -> Hparam:
    return Hparam("r", "count", default, help)


ALPHA = Hparam("lora_alpha", "positive", 16, "scale numerator: ΔW is scaled by lora_alpha / r")
DROPOUT = Hparam("lora_dropout", "dropout", 0.0, "dropout on the adapter's input")
TARGETS = Hparam("target_modules", "modules", "all-linear", "modules to adapt: peft's pattern or names ('all-linear': every linear but the output head)")
LORA_CORE = (_r(), ALPHA, DROPOUT, TARGETS)


def _not_above(low: str, high: str) -> Callable[[dict], tuple[str, str] | None]:
    return lambda v: (low, f"({v[low]}) must not exceed {high} ({v[high]})") if v[low] > v[high] else None


def _even(key: str) -> Callable[[dict], tuple[str, str] | None]:
    return lambda v: (key, f"must be even, got {v[key]}") if v[key] % 2 else None


def _paper_reading_only(v: dict) -> tuple[str, str] | None:
    if v["reading"] == "fixed" and (v["residual"] or v["scale_position"] != "inside"):
        return "reading", "fixed takes neither residual nor scale_position outside (they belong to the paper reading)"
    return None


_SINC = (
    Hparam("grid_size", "count", 50, "number of sinc terms G in φ"),
    Hparam("grid_limit", "positive", 3.0, "the sinc centres span [-grid_limit, grid_limit]"),
)
_LR_LORA_CORE = (
    _r(16),
    Hparam("lora_alpha", "positive", None, "scale numerator; default r (s = 1)", optional=True),
    Hparam("lora_dropout", "dropout", 0.05, "dropout on the adapter's input (0.05: the paper's LLM setting; 0 enables the merged GEMM)"),
    TARGETS,
    *_SINC,
)

# Fields of a peft config that record where it came from, or that peftbench sets (task_type from
# the backbone): not hyperparameters, and dropped from a config file a sweep names.
PEFT_BOOKKEEPING = frozenset({"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version"})


def peft_config_class(peft_type: str):
    """peft's config class for `peft_type` (any case), HparamError naming peft's types if none.

    Imports peft, and torch and transformers with it (README, Measured): only a sweep with a
    `peft` row pays that at `validate`.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type.upper())
    if config_class is None:
        raise HparamError("peft", "peft_type", f"must be one of peft's types ({', '.join(sorted(PEFT_TYPE_TO_CONFIG_MAPPING))}), got {peft_type!r}")
    return config_class


def _peft_fields(values: dict) -> None:
    """The fields besides peft_type make a config of peft's own class for that type: each one a
    field of the class, of the type the class annotates (pydantic, strict), and the class's own
    checks passed (its __post_init__)."""
    import dataclasses
    import typing

    import pydantic

    config_class = peft_config_class(values["peft_type"])
    fields = {k: v for k, v in values.items() if k != "peft_type"}
    settable = {f.name for f in dataclasses.fields(config_class) if f.init} - PEFT_BOOKKEEPING
    hints = typing.get_type_hints(config_class)
    for key, value in fields.items():
        if key not in settable:
            raise HparamError("peft", key, f"is not a field of peft's {config_class.__name__}")
        try:
            pydantic.TypeAdapter(hints[key]).validate_python(value, strict=True)
        except pydantic.ValidationError as err:
            raise HparamError("peft", key, f"must be {getattr(hints[key], '__name__', str(hints[key]).replace('typing.', ''))} ({config_class.__name__}), got {value!r}: {err.errors()[0]['msg']}") from None
    try:
        config_class(**fields)
    except (TypeError, ValueError) as err:
        raise MethodError(f"method 'peft': {config_class.__name__}: {str(err).strip().splitlines()[0]}") from None


def peft_defaults(peft_type: str) -> dict[str, Any]:
    """The default of every field of peft's config class for `peft_type` that has one."""
    import dataclasses

    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(peft_config_class(peft_type))
        if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
    }


def peft_config_fields(saved: dict) -> dict[str, Any]:
    """A saved peft config (what `save_pretrained` writes to adapter_config.json) as the
    hyperparameters of a `peft` row: its peft_type and the fields that differ from the defaults
    of peft's class for it (so a row names what it sets, and a field a later peft adds at its
    default changes nothing)."""
    peft_type = str(saved.get("peft_type"))
    defaults = peft_defaults(peft_type)
    fields = {k: v for k, v in saved.items() if k not in PEFT_BOOKKEEPING and (k not in defaults or v != defaults[k])}
    return {"peft_type": peft_type, **fields}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("none", "adapters.basic", "zero-shot: the backbone as it is, nothing trainable"),
    Method("full", "adapters.basic", "full fine-tuning: every weight trainable"),
    Method("bitfit", "adapters.basic", "BitFit: only the bias terms train"),
    Method("adapter", "adapters.bottleneck", "Houlsby bottleneck adapters after attention and FFN", (
        Hparam("bottleneck", "count", 64, "width of the down/up projection"),
        Hparam("target_modules", "modules", ("o_proj", "down_proj", "output.dense"), "linears whose output gets an adapter"),
    )),
    Method("lora", "adapters.peft_methods", "LoRA: ΔW = (α/r)·B·A", LORA_CORE),
    Method("rslora", "adapters.peft_methods", "rsLoRA: LoRA scaled by α/√r", LORA_CORE),
    Method("dora", "adapters.peft_methods", "DoRA: LoRA with a learned magnitude per output row", LORA_CORE),
    Method("pissa", "adapters.peft_methods", "PiSSA: B·A start as W0's top-r singular part",
           (_r(), Hparam("lora_alpha", "positive", 8, "scale numerator (default r: s = 1, as in the paper)"), DROPOUT, TARGETS)),
    Method("loraplus", "adapters.peft_methods", "LoRA+: B learns loraplus_lr_ratio× faster than A",
           (*LORA_CORE, Hparam("loraplus_lr_ratio", "positive", 16.0, "B's learning rate ÷ A's"))),
    Method("vera", "adapters.peft_methods", "VeRA: scaling vectors on frozen shared random A, B", (
        _r(256, "rank of the shared random A, B"),
        Hparam("d_initial", "positive", 0.1, "initial value of λ_d"),
        Hparam("vera_dropout", "dropout", 0.0, "dropout on the adapter's input"),
        TARGETS,
        Hparam("projection_prng_key", "index", 0, "seed of the shared random projections"),
    )),
    Method("randlora", "adapters.peft_methods", "RandLoRA: full-rank update from frozen random bases", (
        _r(32, "rank of each random basis"),
        Hparam("randlora_alpha", "positive", 640, "scale numerator (peft scales by α/r)"),
        Hparam("randlora_dropout", "dropout", 0.0, "dropout on the adapter's input"),
        TARGETS,
        Hparam("projection_prng_key", "index", 0, "seed of the random bases"),
    )),
    Method("adalora", "adapters.peft_methods", "AdaLoRA: SVD-shaped LoRA whose ranks are budgeted during training", (
        Hparam("init_r", "count", 12, "rank every module starts with"),
        Hparam("target_r", "count", 8, "average rank the budget ends at"),
        Hparam("lora_alpha", "positive", 32, "scale numerator"),
        DROPOUT,
        TARGETS,
        Hparam("total_step", "count", 1000, "schedule length (the loop sets it to its real step count)"),
        Hparam("tinit", "index", 0, "steps before budgeting starts"),
        Hparam("tfinal", "index", 0, "steps at the end with the final budget"),
        Hparam("deltaT", "count", 1, "steps between budget updates"),
    ), (_not_above("target_r", "init_r"),)),
    Method("ia3", "adapters.peft_methods", "IA3: learned rescaling of keys, values and the FFN input", (
        Hparam("target_modules", "modules", None, "modules to rescale (default: peft's per-architecture choice)", optional=True),
        Hparam("feedforward_modules", "modules", None, "which targets are feed-forward (rescale their input)", optional=True),
    )),
    Method("prefix_tuning", "adapters.peft_methods", "prefix tuning: trained key/value prefixes for every layer",
           (Hparam("num_virtual_tokens", "count", 10, "prefix length"),)),
    Method("prompt_tuning", "adapters.peft_methods", "prompt tuning: trained input embeddings prepended to every sequence",
           (Hparam("num_virtual_tokens", "count", 10, "prompt length"),)),
    Method("peft", "adapters.peft_methods", "any peft method: peft's config class for peft_type with the given fields",
           (Hparam("peft_type", "name", None, "peft's PeftType name (LORA, LOHA, LOKR, OFT, ...); every other key is a field of its config class"),),
           open_fields=_peft_fields),
    Method("qlora", "adapters.peft_methods", "QLoRA: LoRA over a frozen NF4-quantised base", LORA_CORE),
    Method("lr_lora", "adapters.elementwise", "LR-LoRA (paper reading): ΔW = φ(s·B·A), φ a learned sum of sincs", (
        *_LR_LORA_CORE,
        Hparam("scale_position", "choice", "inside", "apply s inside φ or outside it", choices=("inside", "outside")),
        Hparam("residual", "bool", False, "add the identity to φ"),
        Hparam("reading", "choice", "paper", "paper: the formula as printed; fixed: lr_lora_fixed", choices=("paper", "fixed")),
    ), (_paper_reading_only,)),
    Method("lr_lora_fixed", "adapters.elementwise", "LR-LoRA (corrected reading): φ starts as the identity", _LR_LORA_CORE),
    Method("sine_lora", "adapters.elementwise", "SineLoRA: ΔW = s·sin(ω·B·A)/√d_in",
           (Hparam("omega", "positive", 200.0, "frequency ω (sweep it: no safe default)"), *LORA_CORE)),
    Method("lora_shift", "adapters.shift", "LoRA-SHIFT: ΔW = s·(S ⊙ B·A), a learned shifted modulation S", (
        Hparam("shift", "choice", "learned", "form of S", choices=("linear", "cyclic", "learned")),
        *LORA_CORE,
        Hparam("shift_dim", "count", 64, "width of the learned shift's features"),
        Hparam("pos", "choice", "flat", "position S is a function of", choices=("flat", "row")),
        Hparam("shift_lr_ratio", "positive", 2.0, "the shift parameters' learning rate ÷ the base lr"),
    ), (_even("shift_dim"),)),
    Method("nola", "adapters.nola", "NoLA: A and B as learned mixtures of frozen random bases", (
        *LORA_CORE,
        Hparam("num_basis_a", "count", 64, "bases mixed into A"),
        Hparam("num_basis_b", "count", 64, "bases mixed into B"),
        Hparam("seed", "index", 0, "seed of the random bases"),
    )),
    Method("dylora", "adapters.dylora", "DyLoRA: LoRA trained at a random rank b ≤ r each step", LORA_CORE),
    Method("elalora", "adapters.elalora", "ElaLoRA: ranks pruned and expanded by importance during training", (
        Hparam("init_r", "count", 8, "active ranks at the start"),
        Hparam("max_r", "count", 12, "rank slots per module"),
        ALPHA,
        DROPOUT,
        TARGETS,
        Hparam("k", "count", 2, "ranks pruned and expanded per reallocation"),
        Hparam("interval", "count", 10, "steps between reallocations"),
        Hparam("t_init", "fraction", 0.1, "fraction of training before reallocation starts"),
        Hparam("t_final", "fraction", 0.2, "fraction of training at the end without reallocation"),
        Hparam("beta", "fraction", 0.85, "EMA factor of the importance scores"),
    ), (_not_above("init_r", "max_r"),)),
)}


def available() -> list[str]:
    """All method names, sorted."""
    return sorted(METHODS)


def method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r} (available: {', '.join(available())})") from None


def hyperparameters(name: str) -> dict[str, Any]:
    """The method's hyperparameters and their defaults."""
    return method(name).defaults()


def resolve(name: str, hparams: dict) -> dict[str, Any]:
    """Every hyperparameter of `name`, `hparams` over the defaults, checked (MethodError if not)."""
    return method(name).resolve(hparams)


def check(name: str, hparams: dict) -> None:
    resolve(name, hparams)

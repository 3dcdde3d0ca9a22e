"""Claims check: a paper's claims as data, a verdict for each from the measured runs.

A claim says "method beats baseline by this much" (in points, or relative to the baseline). The
check tests what transfers across scale — the direction and the size of the gain — never the
absolute accuracy, which depends on backbone, data and budget. Each verdict carries the test
behind it and a line saying at what scale the claim was made and at what scale it was measured.

Verdicts, only where the measured setting is the claim's (its backbone, training-set size,
stated hyperparameters such as the rank, and every task it names):
- supported: the gain is positive and significant (Holm–Bonferroni over the report's one family
  of distinct comparisons), and its CI reaches the claimed size;
- refuted: the CI lies entirely below the claimed size (this covers "no gain" and "a loss"), or
  above a claimed range, or the difference is significantly negative;
- inconclusive: neither, including when the runs lack the methods, tasks or seeds to test it.
Elsewhere the verdict is "not tested at the claim's scale", with the measured effect, its CI and
a line saying what differs: a gain at 135M parameters and 64 examples neither supports nor
refutes one claimed at 8B and 170k.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import Field, ValidationError, model_validator

from jobs.contract import Strict
from pipeline import stats
from pipeline.stats import ALPHA, BLOCK, REPORTED_AVERAGE

UNSTATED = "unstated"  # a backbone the paper does not name: the claim is taken to hold on any


class Scale(Strict):
    """Where the paper measured the claim."""

    backbone: str  # one name, several as "a / b", or "unstated (...)"
    regime: str | None = None  # the paper's training regime name, e.g. 15k ("a / b": several)
    n_train: int | None = None
    seeds: int | None = None
    hparams: dict[str, Any] = Field(default_factory=dict)  # what the claim fixes, e.g. {r: 32} ("same rank")

    def backbones(self) -> set[str] | None:
        """The backbones the claim was made on; None when the paper does not say."""
        return None if self.backbone.startswith(UNSTATED) else {b.strip() for b in self.backbone.split("/")}


class Published(Strict):
    """The two means a paper's table shows; the claimed gain is their difference, in points."""

    method: float
    baseline: float


class Claim(Strict):
    id: str
    statement: str  # the claim in the paper's words, with where it is made
    method: list[str] = Field(min_length=1)  # row labels; the first one a block has is used
    baseline: list[str] = Field(min_length=1)
    published: Published | None = None  # a table's gain: tested as "at least this much"
    gain: tuple[float, float] | None = None  # a claimed range of the gain, points
    relative_gain: tuple[float, float] | None = None  # a claimed range of gain / baseline mean
    tasks: list[str] | None = None  # None: whatever tasks were measured; "a|b": one task under either name
    scale: Scale
    note: str = ""

    @model_validator(mode="after")
    def _one_size(self) -> "Claim":
        given = [name for name in ("published", "gain", "relative_gain") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"claim {self.id}: give exactly one of `published`, `gain` or `relative_gain` (got {len(given)})")
        return self

    def claimed(self) -> tuple[float, float, bool]:
        """(low, high, relative): the size the claim commits to."""
        if self.relative_gain:
            return (*self.relative_gain, True)
        if self.gain:
            return (*self.gain, False)
        return (self.published.method - self.published.baseline, math.inf, False)


class ClaimsFile(Strict):
    paper: str
    alpha: float = ALPHA  # family-wise, over the distinct comparisons the file's claims need
    claims: list[Claim] = Field(min_length=1)


def load(path: str | Path) -> ClaimsFile:
    """Read a claims file (YAML, configs/claims/); a bad one raises ValueError in one line."""
    path = Path(path)
    try:
        return ClaimsFile.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise ValueError(f"{path}: {where}: {first['msg']}") from None


@dataclass(frozen=True)
class Trial:
    """One claim on one measured backbone × regime: which rows and tasks stand for it there."""

    claim: Claim
    backbone: str
    regime: str
    method: str | None
    baseline: str | None
    tasks: tuple[str, ...]

    @property
    def testable(self) -> bool:
        return bool(self.method and self.baseline and self.tasks)

    @property
    def comparison(self) -> tuple:
        return stats.family_key(self.backbone, self.regime, self.method, self.baseline, self.tasks)


def _names(entry: str) -> set[str]:
    return set(entry.split("|"))


def trials(values: pd.DataFrame, claim: Claim) -> list[Trial]:
    """The blocks a claim is tested on: those of its own backbone (and regime) when measured,
    else every block, where it is reported as not tested at its scale."""
    blocks = {key: block for key, block in values.groupby(BLOCK)}
    named = claim.scale.backbones()
    own = [k for k in blocks if named is None or k[0] in named]
    own = [k for k in own if claim.scale.regime is None or k[1] in {r.strip() for r in claim.scale.regime.split("/")}] or own
    out = []
    for backbone, regime in own or list(blocks):
        ran = set(blocks[(backbone, regime)]["method"])
        measured = set(blocks[(backbone, regime)]["task"])
        wanted = set().union(*map(_names, claim.tasks)) if claim.tasks else measured
        out.append(Trial(
            claim, backbone, regime,
            method=next((m for m in claim.method if m in ran), None),
            baseline=next((m for m in claim.baseline if m in ran), None),
            tasks=tuple(sorted(measured & wanted)),
        ))
    return out


def _measured_size(results: pd.DataFrame, trial: Trial) -> float | None:
    """Training examples of the trial's regime, where the results frame records them (n_train)."""
    if "n_train" not in results:
        return None
    block = results[(results["backbone"] == trial.backbone) & (results["regime"] == trial.regime)]["n_train"].dropna()
    return float(block.iloc[0]) if len(block) else None


def _measured_hparams(results: pd.DataFrame, trial: Trial, key: str) -> set | None:
    """The values `key` took in the trial's method and baseline rows; None where not recorded."""
    if "hparams" not in results:
        return None
    rows = results[(results["backbone"] == trial.backbone) & (results["regime"] == trial.regime)
                   & results["method"].isin([trial.method, trial.baseline])]
    found = {json.dumps(h.get(key)) for h in rows["hparams"].map(lambda h: json.loads(h) if isinstance(h, str) else (h or {}))}
    return None if found == {"null"} or not found else found


def differences(results: pd.DataFrame, trial: Trial) -> list[str]:
    """What in the measured setting is not the claim's: backbone, training-set size, the claim's
    hyperparameters, its tasks. Empty: the claim is tested at its own scale."""
    s, claim, out = trial.claim.scale, trial.claim, []
    named = s.backbones()
    if named is not None and trial.backbone not in named:
        out.append(f"backbone {trial.backbone}, not {s.backbone}")
    size = _measured_size(results, trial)
    if s.n_train is not None and size is not None:
        if size != s.n_train:
            out.append(f"{size:,.0f} training examples, not {s.n_train:,}")
    elif s.regime is not None and trial.regime not in {r.strip() for r in s.regime.split("/")}:
        out.append(f"regime {trial.regime}, not {s.regime}")
    for key, want in s.hparams.items():
        found = _measured_hparams(results, trial, key)
        if found is not None and found != {json.dumps(want)}:
            out.append(f"{key} = {' / '.join(sorted(found))}, not {want}")
    if claim.tasks:
        missing = [entry for entry in claim.tasks if not _names(entry) & set(trial.tasks)]
        if missing:
            out.append(f"{len(claim.tasks) - len(missing)} of the claim's {len(claim.tasks)} tasks (missing {', '.join(missing)})")
    return out


def _scale_line(trial: Trial, n_seeds: int, n_train: float | None) -> str:
    """Where the claim was made and where it was measured, side by side."""
    s, claim = trial.claim.scale, trial.claim
    claimed = [s.backbone, f"regime {s.regime}" if s.regime else None,
               f"{s.n_train:,} training examples" if s.n_train else None, f"{s.seeds} seeds" if s.seeds else None,
               ", ".join(f"{k}={v}" for k, v in s.hparams.items()) or None,
               f"{len(claim.tasks)} tasks" if claim.tasks else None]
    of = f" of the claim's {len(claim.tasks)}" if claim.tasks else ""
    size = "" if n_train is None or math.isnan(n_train) else f" ({n_train:,.0f} training examples)"
    measured = (f"{trial.backbone}, regime {trial.regime}{size}, {n_seeds} seed(s), "
                f"{len(trial.tasks)}{of} task(s) ({', '.join(trial.tasks)})")
    return f"claimed on {', '.join(c for c in claimed if c)}; measured on {measured}."


def judge(claim: Claim, result: stats.Difference, test: stats.Significance, alpha: float) -> dict:
    """The verdict on one claim from one measured comparison (`test` already corrected)."""
    low, high, relative = claim.claimed()
    # A relative gain divides by the baseline's measured mean, taken as fixed.
    per = abs(result.baseline_mean) if relative else 1.0
    measured = result.diff / per
    ci_low, ci_high = (result.ci.low / per, result.ci.high / per) if result.ci else (math.nan, math.nan)
    significant = test.significant(alpha)
    direction = "not significant" if not significant else "positive" if result.diff > 0 else "negative"
    if result.ci is None:
        size = "untested (no CI)"
    elif ci_high < low:
        size = "smaller than claimed"
    elif ci_low > high:
        size = "larger than claimed"
    else:
        size = "consistent"
    if direction == "negative" or size.startswith(("smaller", "larger")):
        verdict = "refuted"
    elif direction == "positive" and size == "consistent":
        verdict = "supported"
    else:
        verdict = "inconclusive"
    unit = "relative" if relative else "points"
    claimed = f"≥ {low:+.3g}" if math.isinf(high) else f"{low:+.3g} to {high:+.3g}"
    interval = f"CI {ci_low:+.3g} to {ci_high:+.3g}, {result.ci.method}" if result.ci else "no CI"
    why = f"measured {measured:+.3g} {unit} ({interval}) vs claimed {claimed} {unit}; direction {direction}, size {size}; {test}"
    return dict(verdict=verdict, why=why, measured=measured, ci_low=ci_low, ci_high=ci_high,
                p=test.p, test=test.test, correction=test.correction)


def _not_measured(trial: Trial) -> str:
    if trial.method is None or trial.baseline is None:
        return "not measured: methods " + " / ".join(trial.claim.method + trial.claim.baseline)
    return "not measured: tasks " + ", ".join(trial.claim.tasks or [])


NOT_AT_SCALE = "not tested at the claim's scale"
COLUMNS = ["claim", "statement", "backbone", "regime", "method", "baseline", "verdict", "why", "scale", "note",
           "measured", "ci_low", "ci_high", "p", "test", "correction"]


def _planned(results: pd.DataFrame, claims: ClaimsFile) -> tuple[pd.DataFrame, list[Trial]]:
    values = stats.seed_values(results)
    values = values[values["task"] != REPORTED_AVERAGE]
    return values, [t for claim in claims.claims for t in trials(values, claim)]


def comparisons(results: pd.DataFrame, claims: ClaimsFile, items: pd.DataFrame | None = None) -> dict[tuple, stats.Difference]:
    """The distinct comparisons the claims need, by `stats.family_key`, uncorrected (claims
    sharing a comparison share it here), for the report to correct in its one family."""
    values, planned = _planned(results, claims)
    return {t.comparison: _compare(values, items, t) for t in planned if t.testable}


def check(
    results: pd.DataFrame,
    claims: ClaimsFile | str | Path,
    items: pd.DataFrame | None = None,
    alpha: float | None = None,
    corrected: dict[tuple, stats.Significance] | None = None,
) -> pd.DataFrame:
    """One verdict per (claim, measured backbone × regime), columns COLUMNS.

    Each distinct comparison (method, baseline, block, tasks) is tested once with
    `stats.difference`; `corrected` holds the report's Holm family (by `stats.family_key`),
    else Holm–Bonferroni runs over the claims' own distinct comparisons.
    """
    claims = claims if isinstance(claims, ClaimsFile) else load(claims)
    alpha = claims.alpha if alpha is None else alpha
    values, planned = _planned(results, claims)
    # A results frame may say how many training examples each regime had (column n_train).
    n_train = results.groupby(BLOCK)["n_train"].first().to_dict() if "n_train" in results else {}
    compared = {t.comparison: _compare(values, items, t) for t in planned if t.testable}
    if corrected is None:
        corrected = dict(zip(compared, stats.holm([r.test for r in compared.values()], alpha)))
    rows = []
    for t in planned:
        row = dict(claim=t.claim.id, statement=t.claim.statement, backbone=t.backbone, regime=t.regime,
                   method=t.method, baseline=t.baseline, note=t.claim.note)
        if t.testable:
            result = compared[t.comparison]
            row |= dict(scale=_scale_line(t, result.n_seeds, n_train.get((t.backbone, t.regime))), **judge(t.claim, result, corrected[t.comparison], alpha))
            differ = differences(results, t)
            if differ:  # the evidence stays; the verdict says it is not the claim's setting
                row |= dict(verdict=NOT_AT_SCALE, scale=f"differs: {'; '.join(differ)}. {row['scale']}")
        else:
            row |= dict(scale=_scale_line(t, 0, n_train.get((t.backbone, t.regime))), verdict="inconclusive", why=_not_measured(t))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def _compare(values: pd.DataFrame, items: pd.DataFrame | None, trial: Trial) -> stats.Difference:
    in_block = (values["backbone"] == trial.backbone) & (values["regime"] == trial.regime) & values["task"].isin(trial.tasks)
    pairs = stats.paired_seeds(values[in_block], trial.method, trial.baseline)
    item_pairs = None
    if items is not None:
        item_pairs = stats.paired_items(items, trial.method, trial.baseline)
        item_pairs = item_pairs[(item_pairs["backbone"] == trial.backbone) & (item_pairs["regime"] == trial.regime)
                                & item_pairs["task"].isin(trial.tasks)]
    return stats.difference(pairs, item_pairs, tasks=trial.tasks)

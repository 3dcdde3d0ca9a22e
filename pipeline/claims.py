"""Claims check: a paper's claims as data, a verdict for each from the measured runs.

A claim says "method beats baseline by this much" (in points, or relative to the baseline). The
check tests what transfers across scale — the direction and the size of the gain — never the
absolute accuracy, which depends on backbone, data and budget. Each verdict carries the test
behind it and a line saying at what scale the claim was made and at what scale it was measured.

Verdicts:
- supported: the gain is positive and significant (Holm–Bonferroni over the distinct
  comparisons of the claims file), and its CI reaches the claimed size;
- refuted: the CI lies entirely below the claimed size (this covers "no gain" and "a loss"), or
  above a claimed range, or the difference is significantly negative;
- inconclusive: neither, including when the runs lack the methods, tasks or seeds to test it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from pydantic import Field, ValidationError, model_validator

from jobs.contract import Strict
from pipeline import stats
from pipeline.stats import ALPHA, BLOCK, REPORTED_AVERAGE


class Scale(Strict):
    """Where the paper measured the claim."""

    backbone: str
    regime: str | None = None  # the paper's training regime name, e.g. 15k
    n_train: int | None = None
    seeds: int | None = None


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
    tasks: list[str] | None = None  # None: whatever tasks were measured
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
        return (self.method, self.baseline, self.backbone, self.regime, self.tasks)


def trials(values: pd.DataFrame, claim: Claim) -> list[Trial]:
    """The blocks a claim is tested on: those of its own backbone (and regime) when measured,
    else every block, since a claim's direction and size should hold beyond its own scale."""
    blocks = {key: block for key, block in values.groupby(BLOCK)}
    own = [k for k in blocks if k[0] == claim.scale.backbone]
    own = [k for k in own if k[1] == claim.scale.regime] or own
    out = []
    for backbone, regime in own or list(blocks):
        ran = set(blocks[(backbone, regime)]["method"])
        measured = set(blocks[(backbone, regime)]["task"])
        out.append(Trial(
            claim, backbone, regime,
            method=next((m for m in claim.method if m in ran), None),
            baseline=next((m for m in claim.baseline if m in ran), None),
            tasks=tuple(sorted(measured & set(claim.tasks) if claim.tasks else measured)),
        ))
    return out


def _scale_line(trial: Trial, n_seeds: int, n_train: float | None) -> str:
    """Where the claim was made and where it was measured, side by side."""
    s, claim = trial.claim.scale, trial.claim
    claimed = [s.backbone, f"regime {s.regime}" if s.regime else None,
               f"{s.n_train:,} training examples" if s.n_train else None, f"{s.seeds} seeds" if s.seeds else None,
               f"{len(claim.tasks)} tasks" if claim.tasks else None]
    of = f" of the claim's {len(claim.tasks)}" if claim.tasks else ""
    size = "" if n_train is None or math.isnan(n_train) else f" ({n_train:,.0f} training examples)"
    measured = (f"{trial.backbone}, regime {trial.regime}{size}, {n_seeds} seed(s), "
                f"{len(trial.tasks)}{of} task(s) ({', '.join(trial.tasks)})")
    return f"claimed on {', '.join(c for c in claimed if c)}; measured on {measured}."


def judge(claim: Claim, result: stats.AverageDifference, test: stats.Significance, alpha: float) -> dict:
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


COLUMNS = ["claim", "statement", "backbone", "regime", "method", "baseline", "verdict", "why", "scale", "note",
           "measured", "ci_low", "ci_high", "p", "test", "correction"]


def check(
    results: pd.DataFrame, claims: ClaimsFile | str | Path, items: pd.DataFrame | None = None, alpha: float | None = None
) -> pd.DataFrame:
    """One verdict per (claim, measured backbone × regime), columns COLUMNS.

    Each distinct comparison (method, baseline, block, tasks) is tested once with
    `stats.average_difference` (the LR-LoRA paper's protocol); Holm–Bonferroni runs over those comparisons,
    so claims that share a comparison do not inflate the family.
    """
    claims = claims if isinstance(claims, ClaimsFile) else load(claims)
    alpha = claims.alpha if alpha is None else alpha
    values = stats.seed_values(results)
    values = values[values["task"] != REPORTED_AVERAGE]
    planned = [t for claim in claims.claims for t in trials(values, claim)]
    # A results frame may say how many training examples each regime had (column n_train).
    n_train = results.groupby(BLOCK)["n_train"].first().to_dict() if "n_train" in results else {}
    results_by = {t.comparison: _compare(values, items, t) for t in planned if t.testable}
    corrected = dict(zip(results_by, stats.holm([r.test for r in results_by.values()], alpha)))
    rows = []
    for t in planned:
        row = dict(claim=t.claim.id, statement=t.claim.statement, backbone=t.backbone, regime=t.regime,
                   method=t.method, baseline=t.baseline, note=t.claim.note)
        if t.testable:
            result = results_by[t.comparison]
            row |= dict(scale=_scale_line(t, result.n_seeds, n_train.get((t.backbone, t.regime))), **judge(t.claim, result, corrected[t.comparison], alpha))
        else:
            row |= dict(scale=_scale_line(t, 0, n_train.get((t.backbone, t.regime))), verdict="inconclusive", why=_not_measured(t))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def _compare(values: pd.DataFrame, items: pd.DataFrame | None, trial: Trial) -> stats.AverageDifference:
    in_block = (values["backbone"] == trial.backbone) & (values["regime"] == trial.regime) & values["task"].isin(trial.tasks)
    pairs = stats.paired_seeds(values[in_block], trial.method, trial.baseline)
    item_pairs = None
    if items is not None:
        item_pairs = stats.paired_items(items, trial.method, trial.baseline)
        item_pairs = item_pairs[(item_pairs["backbone"] == trial.backbone) & (item_pairs["regime"] == trial.regime)
                                & item_pairs["task"].isin(trial.tasks)]
    return stats.average_difference(pairs, item_pairs)

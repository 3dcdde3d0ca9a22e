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
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml
from pydantic import Field

from pipeline import stats
from pipeline.spec import Strict
from pipeline.stats import ALPHA, BLOCK, REPORTED_AVERAGE

Verdict = Literal["supported", "refuted", "inconclusive"]


class Scale(Strict):
    """Where the paper measured the claim."""

    backbone: str
    regime: str | None = None  # the paper's training regime name, e.g. 15k
    n_train: int | None = None
    seeds: int | None = None


class Claim(Strict):
    id: str
    statement: str  # the claim in the paper's words, with where it is made
    method: list[str] = Field(min_length=1)  # row labels; the first one a block has is used
    baseline: list[str] = Field(min_length=1)
    published: dict[str, float] | None = None  # {"method": x, "baseline": y}: gain = x − y, points
    gain: tuple[float, float] | None = None  # a claimed range of the gain, points
    relative_gain: tuple[float, float] | None = None  # a claimed range of gain / baseline
    tasks: list[str] | None = None  # None: whatever tasks were measured
    scale: Scale
    note: str = ""

    def claimed(self) -> tuple[float, float, bool]:
        """(low, high, relative): the size the claim commits to; a published gain is a minimum."""
        if self.relative_gain:
            return (*self.relative_gain, True)
        if self.gain:
            return (*self.gain, False)
        if self.published:
            return (self.published["method"] - self.published["baseline"], math.inf, False)
        raise ValueError(f"claim {self.id}: give `published`, `gain` or `relative_gain`")


class ClaimsFile(Strict):
    paper: str
    alpha: float = ALPHA
    claims: list[Claim] = Field(min_length=1)


def load(path: str | Path) -> ClaimsFile:
    """Read a claims file (YAML, configs/claims/)."""
    path = Path(path)
    claims = ClaimsFile.model_validate(yaml.safe_load(path.read_text()))
    for claim in claims.claims:
        claim.claimed()  # a claim with no size is an error at the door, not a silent pass
    return claims


def _scale_line(claim: Claim, backbone: str, regime: str, n_seeds: int, tasks: list[str]) -> str:
    s = claim.scale
    claimed = [s.backbone, f"regime {s.regime}" if s.regime else None,
               f"{s.n_train:,} training examples" if s.n_train else None, f"{s.seeds} seeds" if s.seeds else None,
               f"{len(claim.tasks)} tasks" if claim.tasks else None]
    of = f" of the claim's {len(claim.tasks)}" if claim.tasks else ""
    measured = f"{backbone}, regime {regime}, {n_seeds} seed(s), {len(tasks)}{of} task(s) ({', '.join(tasks)})"
    return f"claimed on {', '.join(c for c in claimed if c)}; measured on {measured}."


def _judge(diff: float, ci: stats.Interval | None, test: stats.Significance, claim: Claim, base_mean: float, alpha: float):
    """(direction, size, verdict, measured, interval) for one claim on one block."""
    low, high, relative = claim.claimed()
    per = abs(base_mean) if relative else 1.0  # a relative gain is the gain over the baseline's mean
    measured = diff / per
    ci_low, ci_high = (ci.low / per, ci.high / per) if ci else (math.nan, math.nan)
    significant = test.significant(alpha)
    direction = "positive" if significant and diff > 0 else "negative" if significant and diff < 0 else "not significant"
    if ci is None:
        size = "untested (no CI)"
    elif ci_high < low:
        size = "smaller than claimed"
    elif ci_low > high:
        size = "larger than claimed"
    else:
        size = "consistent"
    if direction == "negative" or size.startswith(("smaller", "larger")):
        verdict: Verdict = "refuted"
    elif direction == "positive" and size == "consistent":
        verdict = "supported"
    else:
        verdict = "inconclusive"
    return direction, size, verdict, measured, (ci_low, ci_high)


def check(
    results: pd.DataFrame, claims: ClaimsFile | str | Path, items: pd.DataFrame | None = None, alpha: float | None = None
) -> pd.DataFrame:
    """One verdict per (claim, measured backbone × regime that ran both methods).

    A claim is tested on the blocks of its own backbone (and regime) when those were measured, else
    on every block (the scale line says so). The test is `stats.average_difference` (seed 001's protocol);
    Holm–Bonferroni runs over the distinct comparisons of the whole claims file.
    """
    claims = claims if isinstance(claims, ClaimsFile) else load(claims)
    alpha = claims.alpha if alpha is None else alpha
    values = stats.seed_values(results)
    values = values[values["task"] != REPORTED_AVERAGE]
    rows, comparisons = [], {}
    for claim in claims.claims:
        blocks = values.groupby(BLOCK)
        own = [k for k in blocks.groups if k[0] == claim.scale.backbone]
        own = [k for k in own if k[1] == claim.scale.regime] or own
        for backbone, regime in own or list(blocks.groups):
            block = blocks.get_group((backbone, regime))
            method = next((m for m in claim.method if m in set(block["method"])), None)
            baseline = next((m for m in claim.baseline if m in set(block["method"])), None)
            tasks = sorted(set(block["task"]) & set(claim.tasks) if claim.tasks else set(block["task"]))
            row = dict(claim=claim.id, statement=claim.statement, backbone=backbone, regime=regime, method=method, baseline=baseline)
            if method is None or baseline is None or not tasks:
                missing = "methods " + " / ".join(claim.method + claim.baseline) if not (method and baseline) else "tasks " + ", ".join(claim.tasks or [])
                rows.append(dict(row, verdict="inconclusive", why=f"not measured: {missing}", note=claim.note,
                                 scale=_scale_line(claim, backbone, regime, 0, tasks)))
                continue
            pairs = stats.paired_seeds(block[block["task"].isin(tasks)], method, baseline)
            key = (method, baseline, backbone, regime, tuple(tasks))
            if key not in comparisons:
                item_pairs = None
                if items is not None:
                    item_pairs = stats.paired_items(items, method, baseline)
                    item_pairs = item_pairs[(item_pairs["backbone"] == backbone) & (item_pairs["regime"] == regime) & item_pairs["task"].isin(tasks)]
                comparisons[key] = stats.average_difference(pairs, item_pairs)
            n_seeds = comparisons[key].n_seeds
            rows.append(dict(row, key=key, claim_obj=claim, base_mean=pairs["value_b"].mean(),
                             scale=_scale_line(claim, backbone, regime, n_seeds, tasks)))
    keys = list(comparisons)
    corrected = dict(zip(keys, stats.holm([comparisons[k].test for k in keys], alpha)))
    out = []
    for row in rows:
        if "key" not in row:
            out.append(row)
            continue
        result, test = comparisons[row["key"]], corrected[row["key"]]
        claim = row["claim_obj"]
        direction, size, verdict, measured, ci = _judge(result.diff, result.ci, test, claim, row["base_mean"], alpha)
        low, high, relative = claim.claimed()
        unit = "relative" if relative else "points"
        claimed = f"{low:+.3g} to {high:+.3g}" if not math.isinf(high) else f"≥ {low:+.3g}"
        interval = f"CI {ci[0]:+.3g} to {ci[1]:+.3g}, {result.ci.method}" if result.ci else "no CI"
        why = (f"measured {measured:+.3g} {unit} ({interval}) vs claimed {claimed} {unit}; "
               f"direction {direction}, size {size}; {test}")
        out.append({k: row[k] for k in ("claim", "statement", "backbone", "regime", "method", "baseline")}
                   | dict(verdict=verdict, why=why, scale=row["scale"], note=claim.note, measured=measured,
                          ci_low=ci[0], ci_high=ci[1], p=test.p, test=test.test, correction=test.correction))
    columns = ["claim", "statement", "backbone", "regime", "method", "baseline", "verdict", "why", "scale", "note",
               "measured", "ci_low", "ci_high", "p", "test", "correction"]
    return pd.DataFrame(out).reindex(columns=columns)

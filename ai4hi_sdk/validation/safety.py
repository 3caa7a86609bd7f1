"""Safety floors at a model's operating point (pure): per site and pooled, with binomial intervals.

:func:`evaluate_floors` checks one model (the candidate, or the deployed champion) against the
policy's :class:`~ai4hi_sdk.validation.update_policy.SafetyFloors` and returns one
:class:`FloorCheck` per floor with the value, interval and outcome per site and pooled, so a
decision and a report can name exactly which floor failed where.

* sensitivity / specificity: from the confusion counts at the operating point; the interval is
  Wilson's score interval or the Clopper-Pearson exact interval (``scipy.stats.binomtest``) at the
  policy's level. Per-site checks use the sites with enough support; the pooled check sums the
  counts of every site that sent them (between-site heterogeneity is not in that interval: the
  per-site floors are there for it).
* subgroup sensitivity gap: the largest difference in sensitivity between shown subgroups of one
  attribute (cells under k are not shown, so a site with fewer than two such cells is not evaluable).
* ECE: per site, and pooled as the n-weighted mean of the sites' ECE (an upper bound of the pooled
  ECE on the same bins, by the triangle inequality).

Missing evidence fails a floor (``fail closed``): a model without operating-point counts is not
shown to be safe. Segmentation evidence (Dice) has no operating point; the floors do not apply to it
and say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scipy.stats import binomtest

from ai4hi_sdk.validation.scores import score_metric
from ai4hi_sdk.validation.update_policy import RateFloor, SafetyFloors

FLOORS = ("sensitivity", "specificity", "max_subgroup_sensitivity_gap", "max_ece")


def binomial_interval(successes: int, trials: int, *, ci: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """Two-sided ``ci`` interval of a proportion: Wilson score (no continuity correction) or
    Clopper-Pearson exact."""
    if trials <= 0:
        raise ValueError("a binomial interval needs at least one trial")
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes out of {trials} trials")
    kind = {"wilson": "wilson", "clopper-pearson": "exact"}[method]
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=ci, method=kind)
    return float(interval.low), float(interval.high)


@dataclass
class ModelAtSite:
    """What one site reported about one model at its operating point."""

    site: str
    used: bool  # enough support for the per-site rules
    metric: str = "auroc"  # a registered score metric (validation.scores); floors need one at an operating point
    tp: int | None = None
    positives: int | None = None
    tn: int | None = None
    negatives: int | None = None
    ece: float | None = None
    n: int | None = None
    sensitivity_gap: float | None = None
    threshold: float | None = None


@dataclass
class FloorCheck:
    """One floor's outcome: ``values`` maps a site (or ``"pooled"``) to what was checked there."""

    floor: str
    passed: bool
    detail: str
    values: dict[str, dict[str, Any]] = field(default_factory=dict)


def _rate_check(name: str, models: list[ModelAtSite], floor: RateFloor, floors: SafetyFloors) -> FloorCheck:
    hit, total = ("tp", "positives") if name == "sensitivity" else ("tn", "negatives")
    values: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    parts: list[str] = []
    have = [m for m in models if getattr(m, total) is not None]
    for m in models:
        if getattr(m, total) is None:
            if m.used:
                failed.append(m.site)
                parts.append(f"{m.site}: no operating-point counts")
                values[m.site] = {"passed": False, "missing": True}
            continue
        k, n = int(getattr(m, hit)), int(getattr(m, total))
        if n == 0:
            parts.append(f"{m.site}: no {total}, not evaluable")
            values[m.site] = {"n": 0, "passed": None}
            continue
        lo, hi = binomial_interval(k, n, ci=floors.ci, method=floors.interval)
        rate = k / n
        ok = (floor.min is None or rate >= floor.min) and (floor.lower_bound_min is None or lo >= floor.lower_bound_min)
        values[m.site] = {"value": rate, "lower_bound": lo, "upper_bound": hi, "n": n, "used": m.used,
                          "passed": ok if m.used else None}
        parts.append(f"{m.site}: {rate:.3f} ({lo:.3f}-{hi:.3f}, {k}/{n})" + ("" if m.used else " [not used]"))
        if m.used and not ok:
            failed.append(m.site)
    pk, pn = sum(int(getattr(m, hit)) for m in have), sum(int(getattr(m, total)) for m in have)
    if pn > 0:
        lo, hi = binomial_interval(pk, pn, ci=floors.ci, method=floors.interval)
        ok = (floor.min is None or pk / pn >= floor.min) and (
            floor.pooled_lower_bound_min is None or lo >= floor.pooled_lower_bound_min)
        values["pooled"] = {"value": pk / pn, "lower_bound": lo, "upper_bound": hi, "n": pn, "passed": ok}
        parts.append(f"pooled: {pk / pn:.3f} ({lo:.3f}-{hi:.3f}, {pk}/{pn})")
        if not ok:
            failed.append("pooled")
    else:
        failed.append("pooled")
        values["pooled"] = {"passed": False, "missing": True}
        parts.append(f"pooled: no {total} in any site's counts")
    bounds = [(name, floor.min), ("site lower bound", floor.lower_bound_min),
              ("pooled lower bound", floor.pooled_lower_bound_min)]
    rule = ", ".join(f"{what} >= {v}" for what, v in bounds if v is not None)
    ci = f"{floors.ci:.0%} {floors.interval}"
    detail = "; ".join(parts) + f" ({ci} intervals; floors: {rule})"
    if failed:
        detail = f"below the floor at {', '.join(failed)}: " + detail
    return FloorCheck(name, not failed, detail, values)


def _gap_check(models: list[ModelAtSite], limit: float) -> FloorCheck:
    values: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    parts: list[str] = []
    for m in (m for m in models if m.used):
        if m.sensitivity_gap is None:
            values[m.site] = {"passed": None}
            parts.append(f"{m.site}: not evaluable (fewer than two subgroups with k positives)")
            continue
        ok = m.sensitivity_gap <= limit
        values[m.site] = {"value": m.sensitivity_gap, "passed": ok}
        parts.append(f"{m.site}: {m.sensitivity_gap:.3f}")
        if not ok:
            failed.append(m.site)
    detail = "; ".join(parts) + f" (largest subgroup sensitivity gap must be <= {limit})"
    if failed:
        detail = f"gap above the limit at {', '.join(failed)}: " + detail
    return FloorCheck("max_subgroup_sensitivity_gap", not failed, detail, values)


def _ece_check(models: list[ModelAtSite], limit: float) -> FloorCheck:
    values: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    parts: list[str] = []
    for m in models:
        if m.ece is None:
            if m.used:
                failed.append(m.site)
                values[m.site] = {"passed": False, "missing": True}
                parts.append(f"{m.site}: no ECE")
            continue
        ok = m.ece <= limit
        values[m.site] = {"value": m.ece, "n": m.n, "used": m.used, "passed": ok if m.used else None}
        parts.append(f"{m.site}: {m.ece:.3f}" + ("" if m.used else " [not used]"))
        if m.used and not ok:
            failed.append(m.site)
    weighted = [(m.ece, m.n) for m in models if m.ece is not None and m.n]
    if weighted:
        pooled = sum(e * n for e, n in weighted) / sum(n for _, n in weighted)
        values["pooled"] = {"value": pooled, "passed": pooled <= limit}
        parts.append(f"pooled (n-weighted): {pooled:.3f}")
        if pooled > limit:
            failed.append("pooled")
    else:
        failed.append("pooled")
        values["pooled"] = {"passed": False, "missing": True}
    detail = "; ".join(parts) + f" (ECE must be <= {limit})"
    if failed:
        detail = f"above the limit at {', '.join(failed)}: " + detail
    return FloorCheck("max_ece", not failed, detail, values)


def evaluate_floors(models: list[ModelAtSite], floors: SafetyFloors) -> list[FloorCheck]:
    """Every enabled floor for one model over its sites (see the module doc); only sites whose score
    comes at an operating point (classification) are checked."""
    without: dict[str, list[str]] = {}  # "segmentation evidence (Dice)" -> its sites
    for m in models:
        metric = score_metric(m.metric)
        if not metric.operating_point:
            without.setdefault(f"{metric.task} evidence ({metric.label})", []).append(m.site)
    models = [m for m in models if score_metric(m.metric).operating_point]
    checks: list[FloorCheck] = []
    if not models:
        note = "not applicable: " + "; ".join(f"{kind} at {', '.join(sites)}" for kind, sites in without.items()) \
            + " has no operating point" if without else "no site evidence"
        return [FloorCheck(f, bool(without), note) for f in FLOORS if _enabled(f, floors)]
    for name in ("sensitivity", "specificity"):
        floor: RateFloor = getattr(floors, name)
        if _enabled(name, floors):
            checks.append(_rate_check(name, models, floor, floors))
    if floors.max_subgroup_sensitivity_gap is not None:
        checks.append(_gap_check(models, floors.max_subgroup_sensitivity_gap))
    if floors.max_ece is not None:
        checks.append(_ece_check(models, floors.max_ece))
    return checks


def _enabled(name: str, floors: SafetyFloors) -> bool:
    value = getattr(floors, name)
    if isinstance(value, RateFloor):
        return any(v is not None for v in (value.min, value.lower_bound_min, value.pooled_lower_bound_min))
    return value is not None

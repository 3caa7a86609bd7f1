"""Update decision engine and its signed, hash-chained decision log.

``decide(evidence, policy)`` applies the policy's rules to per-site aggregate evidence and returns a
:class:`Decision` with every rule's outcome. Precedence: ``rollback`` (the deployed model is below a
safety floor and the policy says roll back) over ``retrain`` (a retrain rule fired) over ``replace``
(every replace rule and every safety floor passed) over ``keep``. A candidate below any safety floor
is never ``replace``; the failing floor is named in the rules and the reasons.

Evidence and decisions carry ``format_version`` (:data:`FORMAT_VERSION`). Version 1 evidence (fields
``candidate_auroc``, ``champion_auroc``, ``auroc_delta...``, no operating-point counts) is still
read: its names are mapped to the neutral ones (``candidate_score``, ``champion_score``,
``score_delta...``, with ``metric`` saying what the score is) and, lacking counts, it fails the
safety floors (fail closed). ``metric`` names a registered
:class:`~ai4hi_sdk.validation.scores.ScoreMetric`, which says which way the score is better; evidence
with an unknown metric is refused (ValueError), never decided on.

The signed decision log (``DecisionLog``, ``verify_log``, ``public_key_hex``) lives in
:mod:`ai4hi_sdk.validation.decision_log`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ai4hi_sdk.validation.meta_analysis import random_effects
from ai4hi_sdk.validation.scores import ScoreMetric, score_metric
from ai4hi_sdk.validation.update_policy import UpdatePolicy

#: version of the evidence and decision records (1: AUROC-named fields, no operating point)
FORMAT_VERSION = 2
#: version-1 field names -> version-2 names
_V1_NAMES = {"candidate_auroc": "candidate_score", "champion_auroc": "champion_score", "auroc_delta": "score_delta",
             "auroc_delta_ci": "score_delta_ci", "auroc_delta_variance": "score_delta_variance"}


class OperatingCounts(BaseModel):
    """Confusion counts of one model at its operating point on one site's test split."""

    model_config = ConfigDict(extra="forbid")
    tp: int = Field(ge=0)
    positives: int = Field(ge=0)
    tn: int = Field(ge=0)
    negatives: int = Field(ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "OperatingCounts":
        if self.tp > self.positives or self.tn > self.negatives:
            raise ValueError("true positives/negatives exceed the class counts")
        return self


class SiteEvidence(BaseModel):
    """One site's aggregates for the candidate and champion on its fixed test split.

    ``metric`` names the score, a registered :class:`~ai4hi_sdk.validation.scores.ScoreMetric`:
    ``"auroc"`` (classification: DeLong paired interval of the AUROC change), ``"dice"``
    (segmentation: mean Dice, paired t interval of the mean Dice change) or a task kind's own; the
    policy's ``auroc_*`` rules apply to whichever it is, in its direction (for a lower-is-better
    score the candidate must lower it). ``score_delta`` is always candidate minus champion.
    """

    model_config = ConfigDict(extra="forbid")
    site: str
    n: int = Field(ge=0)
    metric: str = "auroc"
    candidate_score: float
    champion_score: float
    score_delta: float
    score_delta_ci: tuple[float, float]
    score_delta_variance: float | None = None
    candidate_subgroup_gap: float | None = None
    champion_subgroup_gap: float | None = None
    drift_alarm: bool = False
    # at each model's operating point (format 2): threshold, counts, ECE, subgroup sensitivity gap
    candidate_threshold: float | None = None
    champion_threshold: float | None = None
    candidate_counts: OperatingCounts | None = None
    champion_counts: OperatingCounts | None = None
    candidate_ece: float | None = None
    champion_ece: float | None = None
    candidate_sensitivity_gap: float | None = None
    champion_sensitivity_gap: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_format_1(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in _V1_NAMES):
            data = {_V1_NAMES.get(k, k): v for k, v in data.items()}
        return data

    @classmethod
    def from_results(
        cls,
        site: str,
        paired: dict,
        *,
        candidate_audit: dict | None = None,
        champion_audit: dict | None = None,
        gap_metric: str = "auroc",
        drift_alarm: bool = False,
        **operating_point: Any,
    ) -> "SiteEvidence":
        """Build from :func:`paired_auroc_difference` output and the two models' :func:`subgroup_audit`;
        ``operating_point`` takes the ``candidate_*``/``champion_*`` threshold, counts and ECE fields
        (the subgroup sensitivity gaps come from the audits)."""
        from ai4hi_sdk.validation.subgroups import max_gap

        return cls(
            site=site, n=paired["n"], candidate_score=paired["auroc_candidate"],
            champion_score=paired["auroc_champion"], score_delta=paired["delta"],
            score_delta_ci=tuple(paired["ci"]), score_delta_variance=paired["variance"],
            candidate_subgroup_gap=max_gap(candidate_audit, gap_metric) if candidate_audit else None,
            champion_subgroup_gap=max_gap(champion_audit, gap_metric) if champion_audit else None,
            candidate_sensitivity_gap=max_gap(candidate_audit, "sensitivity") if candidate_audit else None,
            champion_sensitivity_gap=max_gap(champion_audit, "sensitivity") if champion_audit else None,
            drift_alarm=drift_alarm, **operating_point,
        )


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    sites: list[SiteEvidence]
    #: the operating points the counts were taken at (model version record: threshold, target, split...)
    candidate_operating_point: dict[str, Any] | None = None
    champion_operating_point: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _version(cls, data: Any) -> Any:
        if isinstance(data, dict) and "format_version" not in data:
            old = any(isinstance(s, dict) and any(k in s for k in _V1_NAMES) for s in data.get("sites", []))
            data = {**data, "format_version": 1 if old else FORMAT_VERSION}
        return data


class RuleResult(BaseModel):
    rule: str
    passed: bool
    detail: str
    #: per site (and ``"pooled"``): what was checked there, e.g. ``{"value", "lower_bound", "passed"}``
    values: dict[str, dict[str, Any]] | None = None


class Decision(BaseModel):
    format_version: int = FORMAT_VERSION
    decision: Literal["replace", "keep", "retrain", "rollback"]
    reasons: list[str]
    rules: list[RuleResult]
    sites_used: list[str]
    sites_excluded: list[str] = []
    pooled: dict[str, Any] | None = None


def _floor_models(sites: list[SiteEvidence], role: str, used: set[str]) -> list:
    from ai4hi_sdk.validation.safety import ModelAtSite

    out = []
    for s in sites:
        counts: OperatingCounts | None = getattr(s, f"{role}_counts")
        out.append(ModelAtSite(
            site=s.site, used=s.site in used, metric=s.metric, n=s.n, ece=getattr(s, f"{role}_ece"),
            sensitivity_gap=getattr(s, f"{role}_sensitivity_gap"), threshold=getattr(s, f"{role}_threshold"),
            **(counts.model_dump() if counts else {})))
    return out


def _gain_bound(metric: ScoreMetric, ci: tuple[float, float] | list[float]) -> tuple[str, float, float]:
    """``(side, bound, gain)`` of a candidate-minus-champion interval: the bound that must clear the
    policy's threshold (the lower one; the upper one for a lower-is-better score) and it as a gain."""
    lo, hi = ci
    return ("lower", lo, lo) if metric.higher_is_better else ("upper", hi, -hi)


def _must_exceed(metrics: list[ScoreMetric], threshold: float) -> str:
    """`` (must be > t)`` for higher-is-better scores, `` (must be < -t)`` for lower-is-better ones."""
    parts = []
    if any(m.higher_is_better for m in metrics):
        parts.append(f"must be > {threshold}")
    lower = sorted({m.label for m in metrics if not m.higher_is_better})
    if lower:
        prefix = f"{'/'.join(lower)}: " if parts else ""
        parts.append(f"{prefix}must be < {0.0 - threshold}")
    return f" ({'; '.join(parts)})"


def decide(evidence: Evidence | dict, policy: UpdatePolicy, *, champion_deployed: bool = True) -> Decision:
    """Apply ``policy`` to ``evidence``; see the module doc for precedence.

    ``champion_deployed``: the champion is the model in use. When it is not (an untrained baseline,
    or a model already withdrawn for falling below a floor) the ``deployed_safety_floor.*`` rules
    are not evaluated: there is nothing deployed to retrain or roll back (one rule says so)."""
    from ai4hi_sdk.validation.safety import evaluate_floors

    ev = evidence if isinstance(evidence, Evidence) else Evidence.model_validate(evidence)
    rp, rt = policy.replace_if, policy.retrain_if
    used = [s for s in ev.sites if s.n >= rp.min_site_support]
    excluded = [s for s in ev.sites if s.n < rp.min_site_support]
    reasons: list[str] = [f"site {s.site} excluded: support n={s.n} < min_site_support {rp.min_site_support}"
                          for s in excluded]
    rules: list[RuleResult] = []

    def rule(name: str, passed: bool, detail: str, values: dict | None = None) -> bool:
        rules.append(RuleResult(rule=name, passed=passed, detail=detail, values=values))
        return passed

    ok = rule("replace_if.min_site_support", bool(used),
              f"{len(used)} of {len(ev.sites)} sites have n >= {rp.min_site_support}")
    # what each site's score is and which way is better (an unknown metric: ValueError, no decision)
    info = {s.metric: score_metric(s.metric) for s in ev.sites}
    labels = sorted({m.label for m in info.values()})
    if labels and labels != ["AUROC"]:
        lower = sorted(m.label for m in info.values() if not m.higher_is_better)
        reasons.append(f"performance metric: {'/'.join(labels)} (the policy's AUROC thresholds apply to it"
                       + (f"; {'/'.join(lower)}: lower is better, so the candidate must lower it" if lower else "")
                       + ")")
    if used:
        threshold = rp.auroc_delta_lower_bound_gt
        bad = [s for s in used if not _gain_bound(info[s.metric], s.score_delta_ci)[2] > threshold]
        ok &= rule("replace_if.auroc_delta_lower_bound_gt", not bad,
                   "; ".join("{}: {} bound {:.4f}".format(s.site, *_gain_bound(info[s.metric], s.score_delta_ci)[:2])
                             for s in used)
                   + _must_exceed([info[s.metric] for s in used], threshold))
        if rp.max_subgroup_gap_widening is not None:
            parts, widened = [], []
            for s in used:
                if s.candidate_subgroup_gap is None or s.champion_subgroup_gap is None:
                    parts.append(f"{s.site}: no subgroup gap available")
                    continue
                w = s.candidate_subgroup_gap - s.champion_subgroup_gap
                parts.append(f"{s.site}: gap {s.champion_subgroup_gap:.4f} -> {s.candidate_subgroup_gap:.4f} ({w:+.4f})")
                if w > rp.max_subgroup_gap_widening:
                    widened.append(s.site)
            ok &= rule("replace_if.max_subgroup_gap_widening", not widened,
                       "; ".join(parts) + f" (widening must be <= {rp.max_subgroup_gap_widening})")
    pooled = None
    with_var = [s for s in used if s.score_delta_variance and s.score_delta_variance > 0]
    if with_var:
        pooled = random_effects([s.score_delta for s in with_var], [s.score_delta_variance for s in with_var])
        pooled = {k: v for k, v in pooled.items() if k != "fixed"} | {"sites": [s.site for s in with_var]}
    if rp.pooled_delta_lower_bound_gt is not None:
        threshold = rp.pooled_delta_lower_bound_gt
        directions = {info[s.metric].higher_is_better for s in with_var}
        if pooled is None:
            ok &= rule("replace_if.pooled_delta_lower_bound_gt", False, "no site reported a variance")
        elif len(directions) > 1:
            ok &= rule("replace_if.pooled_delta_lower_bound_gt", False,
                       "the sites' scores improve in opposite directions: their changes are not pooled")
        else:
            metric = info[with_var[0].metric]
            side, bound, gain = _gain_bound(metric, pooled["ci"])
            ok &= rule("replace_if.pooled_delta_lower_bound_gt", gain > threshold,
                       f"random-effects pooled delta {pooled['estimate']:.4f}, {side} bound {bound:.4f}"
                       + _must_exceed([metric], threshold))
    # safety floors at the candidate's operating point: any failure keeps it out
    used_names = {s.site for s in used}
    for check in evaluate_floors(_floor_models(ev.sites, "candidate", used_names), policy.safety_floors):
        ok &= rule(f"safety_floor.{check.floor}", check.passed, f"candidate {check.detail}", check.values)
    replace_ok = bool(ok)

    retrain = rollback = False
    if rt.drift_alarm:
        alarmed = [s.site for s in ev.sites if s.drift_alarm]
        fired = rule("retrain_if.drift_alarm", bool(alarmed),
                     f"drift alarm at {', '.join(alarmed)}" if alarmed else "no drift alarm")
        retrain |= fired
    if rt.auroc_below is not None and used:
        which = "candidate" if replace_ok else "champion"
        low = [s for s in used if info[s.metric].worse_than(getattr(s, f"{which}_score"), rt.auroc_below)]
        limits = sorted({"floor" if info[s.metric].higher_is_better else "ceiling" for s in used})
        fired = rule("retrain_if.auroc_below", bool(low),
                     f"{which} (the model to deploy) {'/'.join(sorted({info[s.metric].label for s in used}))} "
                     + "; ".join(f"{s.site}: {getattr(s, f'{which}_score'):.4f}" for s in used)
                     + f" ({'/'.join(limits)} {rt.auroc_below})")
        retrain |= fired
    if not replace_ok and not champion_deployed:
        rule("no_deployed_model", True,
             "the champion is not deployed (a baseline, or withdrawn): no deployed model to check")
    if not replace_ok and champion_deployed:
        # the champion stays deployed: is it still above every floor on this data?
        on_fail = policy.safety_floors.on_deployed_below_floor
        below = []
        for check in evaluate_floors(_floor_models(ev.sites, "champion", used_names), policy.safety_floors):
            # only a measured shortfall counts against the deployed model; missing evidence is said
            where = [k for k, v in check.values.items() if v.get("passed") is False and not v.get("missing")]
            rule(f"deployed_safety_floor.{check.floor}", not where,
                 f"deployed model (champion) {check.detail}" + ("" if where or check.passed else
                                                                " (missing evidence is not counted against it)"),
                 check.values)
            if where:
                below.append(f"deployed_safety_floor.{check.floor} at {', '.join(where)}")
        fired = rule(f"{on_fail}_if.deployed_below_safety_floor", bool(below),
                     f"the deployed model is below {', '.join(below)}" if below
                     else "the deployed model meets every evaluable safety floor")
        if on_fail == "rollback":
            rollback |= fired
        else:
            retrain |= fired

    fired_reasons = [f"{r.rule} fired: {r.detail}" for r in rules
                     if r.rule.split(".")[0] in ("retrain_if", "rollback_if") and r.passed]
    fired_reasons += [f"{r.rule} failed: {r.detail}" for r in rules
                      if r.rule.startswith("deployed_safety_floor.") and not r.passed]
    if rollback:
        decision = "rollback"
        reasons += fired_reasons
    elif retrain:
        decision = "retrain"
        reasons += fired_reasons
        if replace_ok:
            reasons.append("the validation evidence passes every replace rule, but a retrain rule takes precedence")
    elif replace_ok:
        decision = "replace"
        reasons.append("every replace rule and safety floor passed at every used site")
    else:
        decision = "keep"
    if decision != "replace":
        reasons += [f"{r.rule} failed: {r.detail}" for r in rules
                    if r.rule.split(".")[0] in ("replace_if", "safety_floor") and not r.passed]
    return Decision(decision=decision, reasons=reasons, rules=rules, sites_used=[s.site for s in used],
                    sites_excluded=[s.site for s in excluded], pooled=pooled)

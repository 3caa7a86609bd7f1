"""Update decision engine and its signed, hash-chained decision log.

``decide(evidence, policy)`` applies the policy's rules to per-site aggregate evidence and returns a
:class:`Decision` with every rule's outcome. Precedence: ``retrain`` (a retrain rule fired) over
``replace`` (every replace rule passed) over ``keep``.

The signed decision log (``DecisionLog``, ``verify_log``, ``public_key_hex``) lives in
:mod:`ai4hi_sdk.validation.decision_log`; it is re-exported here so existing imports keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ai4hi_sdk.validation.decision_log import DecisionLog, public_key_hex, verify_log  # noqa: F401 (re-exported)
from ai4hi_sdk.validation.meta_analysis import random_effects
from ai4hi_sdk.validation.update_policy import UpdatePolicy


class SiteEvidence(BaseModel):
    """One site's aggregates for the candidate and champion on its fixed test split."""

    model_config = ConfigDict(extra="forbid")
    site: str
    n: int = Field(ge=0)
    candidate_auroc: float
    champion_auroc: float
    auroc_delta: float
    auroc_delta_ci: tuple[float, float]
    auroc_delta_variance: float | None = None
    candidate_subgroup_gap: float | None = None
    champion_subgroup_gap: float | None = None
    drift_alarm: bool = False
    #: the performance metric in the ``*_auroc`` fields: "dice" for segmentation (mean Dice, paired
    #: t interval of the mean Dice change); the policy's AUROC rules then apply to it
    metric: Literal["auroc", "dice"] = "auroc"

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
    ) -> "SiteEvidence":
        """Build from :func:`paired_auroc_difference` output and the two models' :func:`subgroup_audit`."""
        from ai4hi_sdk.validation.subgroups import max_gap

        return cls(
            site=site, n=paired["n"], candidate_auroc=paired["auroc_candidate"],
            champion_auroc=paired["auroc_champion"], auroc_delta=paired["delta"],
            auroc_delta_ci=tuple(paired["ci"]), auroc_delta_variance=paired["variance"],
            candidate_subgroup_gap=max_gap(candidate_audit, gap_metric) if candidate_audit else None,
            champion_subgroup_gap=max_gap(champion_audit, gap_metric) if champion_audit else None,
            drift_alarm=drift_alarm,
        )


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sites: list[SiteEvidence]


class RuleResult(BaseModel):
    rule: str
    passed: bool
    detail: str


class Decision(BaseModel):
    decision: Literal["replace", "keep", "retrain"]
    reasons: list[str]
    rules: list[RuleResult]
    sites_used: list[str]
    sites_excluded: list[str] = []
    pooled: dict[str, Any] | None = None


def decide(evidence: Evidence | dict, policy: UpdatePolicy) -> Decision:
    """Apply ``policy`` to ``evidence``; see the module doc for precedence."""
    ev = evidence if isinstance(evidence, Evidence) else Evidence.model_validate(evidence)
    rp, rt = policy.replace_if, policy.retrain_if
    used = [s for s in ev.sites if s.n >= rp.min_site_support]
    excluded = [s for s in ev.sites if s.n < rp.min_site_support]
    reasons: list[str] = [f"site {s.site} excluded: support n={s.n} < min_site_support {rp.min_site_support}"
                          for s in excluded]
    rules: list[RuleResult] = []

    def rule(name: str, passed: bool, detail: str) -> bool:
        rules.append(RuleResult(rule=name, passed=passed, detail=detail))
        return passed

    ok = rule("replace_if.min_site_support", bool(used),
              f"{len(used)} of {len(ev.sites)} sites have n >= {rp.min_site_support}")
    label = {"auroc": "AUROC", "dice": "Dice"}
    metrics = sorted({label[s.metric] for s in ev.sites})
    if metrics and metrics != ["AUROC"]:
        reasons.append(f"performance metric: {'/'.join(metrics)} (the policy's AUROC thresholds apply to it)")
    if used:
        bad = [s for s in used if not s.auroc_delta_ci[0] > rp.auroc_delta_lower_bound_gt]
        ok &= rule("replace_if.auroc_delta_lower_bound_gt", not bad,
                   "; ".join(f"{s.site}: lower bound {s.auroc_delta_ci[0]:.4f}" for s in used)
                   + f" (must be > {rp.auroc_delta_lower_bound_gt})")
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
    with_var = [s for s in used if s.auroc_delta_variance and s.auroc_delta_variance > 0]
    if with_var:
        pooled = random_effects([s.auroc_delta for s in with_var], [s.auroc_delta_variance for s in with_var])
        pooled = {k: v for k, v in pooled.items() if k != "fixed"} | {"sites": [s.site for s in with_var]}
    if rp.pooled_delta_lower_bound_gt is not None:
        ok &= rule("replace_if.pooled_delta_lower_bound_gt",
                   pooled is not None and pooled["ci"][0] > rp.pooled_delta_lower_bound_gt,
                   "no site reported a variance" if pooled is None else
                   f"random-effects pooled delta {pooled['estimate']:.4f}, lower bound {pooled['ci'][0]:.4f}"
                   f" (must be > {rp.pooled_delta_lower_bound_gt})")
    replace_ok = bool(ok)

    retrain = False
    if rt.drift_alarm:
        alarmed = [s.site for s in ev.sites if s.drift_alarm]
        fired = rule("retrain_if.drift_alarm", bool(alarmed),
                     f"drift alarm at {', '.join(alarmed)}" if alarmed else "no drift alarm")
        retrain |= fired
    if rt.auroc_below is not None and used:
        which = "candidate" if replace_ok else "champion"
        low = [s for s in used if getattr(s, f"{which}_auroc") < rt.auroc_below]
        fired = rule("retrain_if.auroc_below", bool(low),
                     f"{which} (the model to deploy) {'/'.join(sorted({label[s.metric] for s in used}))} "
                     + "; ".join(f"{s.site}: {getattr(s, f'{which}_auroc'):.4f}" for s in used)
                     + f" (floor {rt.auroc_below})")
        retrain |= fired

    if retrain:
        decision = "retrain"
        reasons += [f"{r.rule} fired: {r.detail}" for r in rules if r.rule.startswith("retrain_if") and r.passed]
        if replace_ok:
            reasons.append("the validation evidence passes every replace rule, but a retrain rule takes precedence")
    elif replace_ok:
        decision = "replace"
        reasons.append("every replace rule passed at every used site")
    else:
        decision = "keep"
        reasons += [f"{r.rule} failed: {r.detail}" for r in rules if r.rule.startswith("replace_if") and not r.passed]
    return Decision(decision=decision, reasons=reasons, rules=rules, sites_used=[s.site for s in used],
                    sites_excluded=[s.site for s in excluded], pooled=pooled)

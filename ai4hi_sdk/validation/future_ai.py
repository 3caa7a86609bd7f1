"""A model version's evidence laid against FUTURE-AI (pure).

FUTURE-AI: international consensus guideline for trustworthy and deployable artificial
intelligence in healthcare (Lekadir et al., BMJ 2025;388:e081554) names six principles: fairness,
universality, traceability, usability, robustness, explainability. :func:`future_ai_table` maps
what the framework holds for one model version (:class:`ModelVersionEvidence`) to one row per piece
of evidence, each ``passed``, ``failed`` or ``missing`` with a one-line detail, and
:func:`principle_status` sums a principle up (``failed`` if any row failed, else ``missing`` if
any row is missing, else ``passed``): missing evidence never reads as a pass.

The table judges only what the framework measures; it is not a certification against the guideline.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PRINCIPLES = ("fairness", "universality", "traceability", "usability", "robustness", "explainability")
Status = Literal["passed", "failed", "missing"]


class Limits(BaseModel):
    """Where the table draws the line for evidence the update policy has no floor for."""

    model_config = ConfigDict(extra="forbid")
    #: largest acceptable drop of the score under a perturbation (robustness panel), per site
    max_robustness_drop: float = Field(0.05, ge=0)
    #: the candidate may drop at most this much more than the champion under the same perturbation
    max_drop_beyond_champion: float = Field(0.02, ge=0)
    #: leave-one-site-out: the held-out site's score must reach this ...
    min_held_out_score: float = Field(0.70, ge=0, le=1)
    #: ... and be at most this far below the model trained with every site, validated at that site
    max_held_out_drop: float = Field(0.10, ge=0)


class ModelVersionEvidence(BaseModel):
    """What the framework holds for one model version; every field is optional (absent = missing).

    Rule lists hold :class:`~ai4hi_sdk.validation.decision.RuleResult` dumps (``rule``, ``passed``,
    ``detail``) from the decisions about this version.
    """

    model_config = ConfigDict(extra="forbid")
    model: str
    sha256: str | None = None
    #: sites whose test split validated this version (with a subgroup audit in their report)
    validation_sites: list[str] = []
    subgroup_audit_sites: list[str] = []
    rules: list[dict[str, Any]] = []
    #: {site held out: {"score": its score from the model trained without it, "full_score": ... with it}}
    leave_one_site_out: dict[str, dict[str, float]] | None = None
    #: {"verified": bool, "entries": int, "model_entries": int} of the signed decision log
    decision_log: dict[str, Any] | None = None
    privacy_recorded: bool = False
    operating_point: dict[str, Any] | None = None
    #: pooled decision curve {"thresholds", "model", "treat_all", "treat_none"}
    net_benefit: dict[str, list[float]] | None = None
    model_card: bool = False
    report: bool = False
    #: {site: {"worst_delta": float, "champion_worst_delta": float | None}} (negative = a drop)
    robustness: dict[str, dict[str, float | None]] | None = None
    #: None: never monitored; else the sites whose drift monitor alarmed (empty: none)
    drift_alarms: list[str] | None = None
    #: {site: {"n_images": int, "saliency_in_mask": float | None}} from site-local explanation pages
    explanations: dict[str, dict[str, float | None]] | None = None


def _row(principle: str, evidence: str, status: Status, detail: str) -> dict[str, str]:
    return {"principle": principle, "evidence": evidence, "status": status, "detail": detail}


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "undefined" if x is None else format(x, fmt)


def _rules_row(principle: str, evidence: str, rules: list[dict], names: tuple[str, ...]) -> dict[str, str]:
    found = [r for r in rules if r.get("rule") in names]
    if not found:
        return _row(principle, evidence, "missing", "not evaluated in any decision about this version")
    failed = [r for r in found if not r.get("passed")]
    if failed:
        return _row(principle, evidence, "failed", "; ".join(f"{r['rule']}: {r.get('detail', '')}" for r in failed))
    return _row(principle, evidence, "passed", "; ".join(sorted({r["rule"] for r in found})) + " passed")


def future_ai_table(ev: ModelVersionEvidence | dict, limits: Limits | None = None) -> list[dict[str, str]]:
    """Rows ``{"principle", "evidence", "status", "detail"}`` in the guideline's principle order."""
    ev = ev if isinstance(ev, ModelVersionEvidence) else ModelVersionEvidence.model_validate(ev)
    lim = limits or Limits()
    rows: list[dict[str, str]] = []

    # fairness
    rows.append(_row("fairness", "subgroup audit at each site (cells under k suppressed)",
                     "passed" if ev.subgroup_audit_sites else "missing",
                     f"audited at {', '.join(ev.subgroup_audit_sites)}" if ev.subgroup_audit_sites
                     else "no site sent a subgroup audit"))
    rows.append(_rules_row("fairness", "subgroup gaps within the update policy", ev.rules,
                           ("replace_if.max_subgroup_gap_widening", "safety_floor.max_subgroup_sensitivity_gap")))

    # universality
    n = len(ev.validation_sites)
    detail = (f"{n} sites: {', '.join(ev.validation_sites)}" if n >= 2 else
              f"only one site ({ev.validation_sites[0]}): no evidence across hospitals" if n else
              "not validated at any site")
    rows.append(_row("universality", "validated on each site's own fixed test split",
                     "passed" if n >= 2 else "missing", detail))
    if ev.leave_one_site_out is None:
        rows.append(_row("universality", "leave-one-site-out (validated at a hospital it never saw)", "missing",
                         "no leave-one-site-out run for this version"))
    else:
        bad, parts = [], []
        for site, r in sorted(ev.leave_one_site_out.items()):
            score, full = r.get("score"), r.get("full_score")
            parts.append(f"{site}: {_num(score)}" + (f" (all sites: {full:.3f})" if full is not None else ""))
            dropped = full is not None and score is not None and full - score > lim.max_held_out_drop
            if score is None or score < lim.min_held_out_score or dropped:
                bad.append(site)
        rows.append(_row("universality", "leave-one-site-out (validated at a hospital it never saw)",
                         "failed" if bad else "passed",
                         ("below the limit at " + ", ".join(bad) + ": " if bad else "") + "; ".join(parts)
                         + f" (held-out score >= {lim.min_held_out_score}, drop <= {lim.max_held_out_drop})"))
    rows.append(_rules_row("universality", "safety floors at every used site", ev.rules,
                           ("safety_floor.sensitivity", "safety_floor.specificity")))

    # traceability
    log = ev.decision_log
    if log is None:
        rows.append(_row("traceability", "signed lineage in the hash-chained decision log", "missing",
                         "no decision log"))
    elif not log.get("verified"):
        rows.append(_row("traceability", "signed lineage in the hash-chained decision log", "failed",
                         f"the decision log does not verify: {log.get('reason', 'tampered')}"))
    else:
        mine = int(log.get("model_entries", 0))
        rows.append(_row("traceability", "signed lineage in the hash-chained decision log",
                         "passed" if mine and ev.sha256 else "missing",
                         f"sha256 {ev.sha256[:12] if ev.sha256 else '?'}..., {mine} signed decision(s) about it, "
                         f"log of {log.get('entries')} entries verified"))
    rows.append(_row("traceability", "privacy spent per site (epsilon, delta)",
                     "passed" if ev.privacy_recorded else "missing",
                     "recorded with the model version" if ev.privacy_recorded else "not recorded"))

    # usability
    op = ev.operating_point
    detail = "no recorded threshold"
    if op:
        value = f" >= {op['value']}" if op.get("value") is not None else ""
        detail = f"threshold {op['threshold']:.3f} for {op.get('target')}{value}"
    rows.append(_row("usability", "operating point chosen on the validation splits",
                     "passed" if op and op.get("split", "validation") == "validation" else "missing", detail))
    rows.append(_rules_row("usability", "calibration (ECE) at every used site and pooled", ev.rules,
                           ("safety_floor.max_ece",)))
    if ev.net_benefit is None:
        rows.append(_row("usability", "net benefit over the policy's threshold range", "missing",
                         "no decision-curve counts"))
    else:
        nb = ev.net_benefit
        below = [t for t, m, a in zip(nb["thresholds"], nb["model"], nb["treat_all"]) if m < max(a, 0.0)]
        rows.append(_row("usability", "net benefit over the policy's threshold range", "failed" if below else "passed",
                         ("below treat-all or treat-none at t = " + ", ".join(f"{t:.2f}" for t in below)) if below else
                         "above treat-all and treat-none at every t in "
                         f"{nb['thresholds'][0]:.2f}-{nb['thresholds'][-1]:.2f}"))
    rows.append(_row("usability", "model card and clinician report", "passed" if ev.model_card and ev.report
                     else "missing", "written" if ev.model_card and ev.report else "not written"))

    # robustness
    if ev.robustness is None:
        rows.append(_row("robustness", "robustness panel (noise, contrast, blur, resolution)", "missing",
                         "no robustness panel"))
    else:
        bad, parts = [], []
        for site, rob in sorted(ev.robustness.items()):
            worst, champ = rob.get("worst_delta"), rob.get("champion_worst_delta")
            parts.append(f"{site}: worst change {_num(worst, '+.3f')}"
                         + (f" (champion {champ:+.3f})" if champ is not None else ""))
            if worst is None or -worst > lim.max_robustness_drop or (
                    champ is not None and champ - worst > lim.max_drop_beyond_champion):
                bad.append(site)
        rows.append(_row("robustness", "robustness panel (noise, contrast, blur, resolution)",
                         "failed" if bad else "passed",
                         ("brittle at " + ", ".join(bad) + ": " if bad else "") + "; ".join(parts)
                         + f" (drop <= {lim.max_robustness_drop}, "
                         f"<= {lim.max_drop_beyond_champion} beyond the champion)"))
    if ev.drift_alarms is None:
        rows.append(_row("robustness", "drift monitoring", "missing", "never monitored"))
    else:
        rows.append(_row("robustness", "drift monitoring", "failed" if ev.drift_alarms else "passed",
                         f"drift alarm at {', '.join(ev.drift_alarms)}" if ev.drift_alarms else "monitored, no alarm"))

    # explainability
    if not ev.explanations:
        rows.append(_row("explainability", "site-local saliency pages (images stay at the site)", "missing",
                         "no site rendered explanations"))
    else:
        parts = []
        for site, expl in sorted(ev.explanations.items()):
            share = expl.get("saliency_in_mask")
            parts.append(f"{site}: {int(expl.get('n_images') or 0)} images"
                         + (f", {share:.0%} of saliency inside the mask" if share is not None else ""))
        rows.append(_row("explainability", "site-local saliency pages (images stay at the site)", "passed",
                         "; ".join(parts)))
    return rows


def principle_status(rows: list[dict[str, str]]) -> dict[str, Status]:
    """Per principle: ``failed`` if any row failed, else ``missing`` if any row is missing, else ``passed``."""
    out: dict[str, Status] = {}
    for p in PRINCIPLES:
        states = {r["status"] for r in rows if r["principle"] == p}
        out[p] = "failed" if "failed" in states else "missing" if "missing" in states or not states else "passed"
    return out

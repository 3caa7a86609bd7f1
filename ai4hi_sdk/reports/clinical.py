"""Clinical-safety parts of the report and the model cards: safety panel, operating points,
calibration before/after, net benefit, robustness, site-local explanations, FUTURE-AI table.

Inputs (all optional; a part without its input says so or is left out):

* decision steps' ``rules`` (:class:`~ai4hi_sdk.validation.decision.RuleResult` dumps): the
  ``safety_floor.*`` (candidate) and ``deployed_safety_floor.*`` rules with per-site ``values``;
* ``history["models"][m]``: ``operating_point`` (from
  :func:`~ai4hi_sdk.validation.operating_point.operating_point_from_payloads`), ``calibration``
  (:func:`~ai4hi_sdk.validation.calibration.recalibrate_from_payloads`), ``leave_one_site_out``
  (``{site: {"score", "full_score"}}``);
* per site and model in a validation record: ``threshold``, ``calibration_summary``,
  ``net_benefit`` (counts), ``robustness`` (:func:`~ai4hi_sdk.validation.robustness.robustness_panel`),
  ``explanations`` (a model's part of :func:`~ai4hi_sdk.reports.explanations.render_explanations`).
"""

from __future__ import annotations

import html
from typing import Any

from ai4hi_sdk.reports.render import fmt
from ai4hi_sdk.reports import plots
from ai4hi_sdk.validation.future_ai import ModelVersionEvidence, future_ai_table, principle_status
from ai4hi_sdk.validation.net_benefit import net_benefit_curve, pool_counts
from ai4hi_sdk.validation.robustness import panel_metric, robustness_summary

FLOOR_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity",
               "max_subgroup_sensitivity_gap": "largest subgroup sensitivity gap", "max_ece": "ECE"}
CSS = """.pass{background:#d4edda;color:#0a4d1c}.fail{background:#f8d7da;color:#8a1020;font-weight:bold}
.na{background:#eee;color:#666}.missing{background:#fff3cd;color:#6b4e00}
#safety{border:3px solid #444;padding:.3em 1em;margin:1em 0}#safety h2{margin-top:.3em}"""


def _cell(value: dict[str, Any] | None) -> tuple[str, str]:
    """(text, css class) of one floor at one site."""
    if not value:
        return "–", "na"
    if value.get("missing"):
        return "no evidence", "fail" if value.get("passed") is False else "missing"
    text = fmt(value.get("value"))
    if value.get("lower_bound") is not None:
        text += f" (lower {fmt(value['lower_bound'])})"
    if value.get("passed") is None:
        return text + (" not used" if value.get("used") is False else " not evaluable"), "na"
    return text + (" PASS" if value["passed"] else " FAIL"), "pass" if value["passed"] else "fail"


def floor_rules(step: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``{"candidate": [...], "deployed": [...]}`` safety-floor rules of a decision step."""
    rules = step.get("rules") or []
    return {"candidate": [r for r in rules if r["rule"].startswith("safety_floor.")],
            "deployed": [r for r in rules if r["rule"].startswith("deployed_safety_floor.")]}


def _floor_table(rules: list[dict[str, Any]], model: str) -> str:
    sites = sorted({k for r in rules for k in (r.get("values") or {}) if k != "pooled"})
    cols = sites + ["pooled"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["floor", "model", "result"] + cols)
    rows = []
    for r in rules:
        name = r["rule"].split(".", 1)[1]
        overall = "pass" if r["passed"] else "fail"
        cells = []
        for c in cols:
            text, cls = _cell((r.get("values") or {}).get(c))
            cells.append(f"<td class='{cls}'>{html.escape(text)}</td>")
        rows.append(f"<tr><td title='{html.escape(r['rule'])}'>{html.escape(FLOOR_NAMES.get(name, name))}</td>"
                    f"<td>{html.escape(model)}</td><td class='{overall}'>{'PASS' if r['passed'] else 'FAIL'}</td>"
                    + "".join(cells) + "</tr>")
        if not r.get("values"):  # not applicable (no operating point) or no evidence at all: say why
            rows.append(f"<tr><td colspan='{3 + len(cols)}' class='na'>{html.escape(r.get('detail', ''))}</td></tr>")
    return f"<table class='floors'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def safety_panel_html(history: dict[str, Any]) -> str:
    """The panel the report opens with: every decision's safety floors, per site and pooled, in colour."""
    parts = ["<section id='safety'><h2>Safety panel</h2>",
             f"<p>Deployed model now: <b>{html.escape(str(history.get('deployed', _deployed(history))))}</b>. "
             "Each floor of the update policy at each model's operating point, on each site's fixed test split "
             "and pooled (binomial lower bounds in brackets). A candidate below any floor is never deployed.</p>"]
    shown = 0
    for step in history.get("steps", []):
        if step.get("kind") != "decision":
            continue
        rules = floor_rules(step)
        title = (f"{step.get('stage', 'decision')}: {str(step.get('decision', '')).upper()} "
                 f"(candidate {step.get('candidate')}, decision log entry {step.get('log_seq')})")
        if not rules["candidate"] and not rules["deployed"]:
            parts.append(f"<h3>{html.escape(title)}</h3><p class='missing'>No safety floors were evaluated for this "
                         "decision (recorded before the update policy had them).</p>")
            continue
        shown += 1
        failed = [r["rule"] for r in rules["candidate"] + rules["deployed"] if not r["passed"]]
        parts.append(f"<h3>{html.escape(title)}</h3>")
        if failed:
            parts.append(f"<p class='fail'>Failed: {html.escape(', '.join(failed))}</p>")
        if rules["candidate"]:
            parts.append(_floor_table(rules["candidate"], f"candidate {step.get('candidate')}"))
        if rules["deployed"]:
            parts.append(_floor_table(rules["deployed"], "deployed (champion)"))
    if not shown and not any(s.get("kind") == "decision" for s in history.get("steps", [])):
        parts.append("<p class='missing'>No update decision yet.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _deployed(history: dict[str, Any]) -> str:
    deployed = [s.get("deployed_after") for s in history.get("steps", []) if s.get("kind") == "decision"
                and s.get("deployed_after")]
    return deployed[-1] if deployed else "(not recorded)"


def operating_points_html(history: dict[str, Any]) -> str:
    """Each model version's threshold and recalibration (empty string when no version has one)."""
    rows = []
    for model, info in history.get("models", {}).items():
        op, cal = info.get("operating_point"), info.get("calibration")
        if not op and not cal:
            continue
        target = (f"{op.get('target')} >= {op['value']}" if op and op.get("value") is not None else
                  (op or {}).get("target", "–"))
        rows.append([model, fmt((op or {}).get("threshold")), target, (op or {}).get("split", "–"),
                     ", ".join((op or {}).get("sites", [])) or "–",
                     "exact (secure aggregation)" if (op or {}).get("exact_counts") else
                     f"merged, k={(op or {}).get('k')}" if op else "–",
                     (cal or {}).get("method", "none"),
                     f"{fmt((cal or {}).get('before', {}).get('ece'))} -> "
                     f"{fmt((cal or {}).get('after', {}).get('ece'))}"])
    if not rows:
        return ""
    return ("<h2 id='operating-points'>Operating points and recalibration</h2><p>Chosen on the sites' validation "
            "splits (never the test splits) from per-class score histograms; ECE pooled over the validation "
            "histograms.</p>" + _table(["model", "threshold", "target", "split", "sites", "counts", "recalibration",
                                        "ECE before -> after"], rows))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(b64: str, alt: str) -> str:
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def net_benefit_curves(val: dict[str, dict], role: str = "candidate") -> dict[str, dict[str, list[float]]]:
    """``{site: curve, "pooled": curve}`` from the sites' counts of one validation (empty without counts)."""
    counts = {site: rep[role]["net_benefit"] for site, rep in sorted(val.items())
              if (rep.get(role) or {}).get("net_benefit")}
    if not counts:
        return {}
    curves = {site: net_benefit_curve(c) for site, c in counts.items()}
    curves["pooled"] = net_benefit_curve(pool_counts(counts.values()))
    return curves


def validation_clinical_html(val: dict[str, dict]) -> list[str]:
    """Thresholds, calibration before/after, net benefit, robustness and explanations of one validation."""
    parts: list[str] = []
    rows = []
    for site, rep in sorted(val.items()):
        for role in ("candidate", "champion"):
            r = rep.get(role) or {}
            cs = r.get("calibration_summary") or {}
            if not cs.get("before"):
                continue
            after = cs.get("after") or {}
            rows.append([site, role, fmt(r.get("threshold")), fmt(r.get("sensitivity")), fmt(r.get("specificity")),
                         fmt(cs.get("observed_rate")), f"{fmt(cs['before'].get('citl'))} -> {fmt(after.get('citl'))}",
                         f"{fmt(cs['before'].get('ece'))} -> {fmt(after.get('ece'))}",
                         f"{fmt(cs['before'].get('brier'))} -> {fmt(after.get('brier'))}"])
    if rows:
        parts.append("<h3>Operating point and calibration (before -> after recalibration)</h3>"
                     + _table(["site", "model", "threshold", "sensitivity", "specificity", "observed rate",
                               "calibration-in-the-large", "ECE", "Brier"], rows))
    curves = net_benefit_curves(val)
    if curves:
        parts.append("<h3>Net benefit (decision curves, candidate)</h3>")
        parts.append(_img(plots.net_benefit_plot(curves, "net benefit per site and pooled"), "net benefit curves"))
    panels: dict[str, dict[str, dict]] = {
        site: {role: rep[role]["robustness"] for role in ("candidate", "champion")
               if (rep.get(role) or {}).get("robustness")} for site, rep in sorted(val.items())}
    panels = {s: p for s, p in panels.items() if p}
    if panels:
        rrows = []
        for site, by_role in panels.items():
            for role, p in sorted(by_role.items()):
                if p.get("suppressed"):
                    rrows.append([site, role, "suppressed (fewer than k per class)", "", "", ""])
                    continue
                metric = panel_metric(p) or "score"
                worst: tuple[str | None, dict[str, Any]] = min(p.get("perturbations", {}).items(),
                                                               key=lambda kv: kv[1]["delta"], default=(None, {}))
                rrows.append([site, role, metric.upper(), fmt(p.get(metric)), worst[0] or "–",
                              fmt(worst[1].get("delta"))])
        parts.append("<h3>Robustness panel</h3>" + _table(["site", "model", "metric", "clean", "worst perturbation",
                                                             "change"], rrows))
        parts.append(_img(plots.robustness_plot(panels, "score change under acquisition-like perturbations"),
                          "robustness panel"))
    erows = []
    for site, rep in sorted(val.items()):
        for role in ("candidate", "champion"):
            e = (rep.get(role) or {}).get("explanations")
            if e:
                erows.append([site, role, fmt(e.get("n_images"), 0), fmt(e.get("saliency_in_mask"))])
    if erows:
        parts.append("<h3>Site-local explanations</h3><p>Each site's saliency page stays in its own workspace; "
                     "only these numbers left it.</p>"
                     + _table(["site", "model", "images explained", "share of saliency inside the mask"], erows))
    return parts


def model_version_evidence(history: dict[str, Any], records: dict[str, dict], card: dict[str, Any],
                           verification: dict | None) -> ModelVersionEvidence:
    """What the framework holds about ``card["model"]``, for :func:`future_ai_table`."""
    model = card["model"]
    info = history["models"][model]
    steps = history.get("steps", [])
    validations = [s for s in steps if s.get("kind") == "validate" and s.get("candidate") == model]
    decisions = [s for s in steps if s.get("kind") == "decision" and s.get("candidate") == model]
    sites, audited, robustness, explanations, curve = set(), set(), {}, {}, None
    for step in validations:
        val = records[step["record"]].get("validation") or {}
        sites |= set(val)
        for site, rep in val.items():
            cand = rep.get("candidate") or {}
            if any((d or {}).get("cells") for d in (cand.get("subgroups") or {}).values()):
                audited.add(site)
            if cand.get("robustness"):
                robustness[site] = robustness_summary(cand["robustness"], (rep.get("champion") or {}).get("robustness"))
            if cand.get("explanations"):
                explanations[site] = {"n_images": cand["explanations"].get("n_images"),
                                      "saliency_in_mask": cand["explanations"].get("saliency_in_mask")}
        curves = net_benefit_curves(val)
        curve = curves.get("pooled", curve)
    monitors = [s for s in steps if s.get("kind") == "monitor" and s.get("model") == model]
    alarms = None
    if monitors:
        alarms = sorted({site for s in monitors for site, r in (records[s["record"]].get("drift") or {}).items()
                         if r.get("alarm")})
    log = None
    if verification is not None:
        log = {**verification, "verified": bool(verification.get("ok")),
               "model_entries": sum(1 for d in decisions if d.get("log_seq") is not None)}
    return ModelVersionEvidence(
        model=model, sha256=info.get("sha256"), validation_sites=sorted(sites), subgroup_audit_sites=sorted(audited),
        rules=[r for d in decisions for r in (d.get("rules") or [])],
        leave_one_site_out=info.get("leave_one_site_out"), decision_log=log,
        privacy_recorded=bool(info.get("training", {}).get("privacy")), operating_point=info.get("operating_point"),
        net_benefit=curve, model_card=True, report=True, robustness=robustness or None, drift_alarms=alarms,
        explanations=explanations or None)


def card_clinical_fields(history: dict[str, Any], records: dict[str, dict], card: dict[str, Any],
                         verification: dict | None = None) -> dict[str, Any]:
    """Model-card fields: operating point, recalibration, safety floors per decision, net benefit per
    validation, robustness, leave-one-site-out and the FUTURE-AI table."""
    model = card["model"]
    info = history["models"][model]
    steps = history.get("steps", [])
    floors = [{"log_seq": s.get("log_seq"), "stage": s.get("stage"), "decision": s.get("decision"),
               "rules": [{k: r.get(k) for k in ("rule", "passed", "detail", "values")}
                         for r in floor_rules(s)["candidate"]]}
              for s in steps if s.get("kind") == "decision" and s.get("candidate") == model]
    net_benefit, robustness = [], {}
    for s in steps:
        if s.get("kind") == "validate" and s.get("candidate") == model:
            val = records[s["record"]].get("validation") or {}
            curves = net_benefit_curves(val)
            if curves:
                net_benefit.append({"record": s["record"], "curves": curves})
            for site, rep in val.items():
                if (rep.get("candidate") or {}).get("robustness"):
                    robustness[site] = rep["candidate"]["robustness"]
    rows = future_ai_table(model_version_evidence(history, records, card, verification))
    return {"operating_point": info.get("operating_point"), "recalibration": info.get("calibration"),
            "safety_floors": floors, "net_benefit": net_benefit, "robustness": robustness,
            "leave_one_site_out": info.get("leave_one_site_out"), "future_ai": rows,
            "future_ai_summary": principle_status(rows)}


def card_clinical_markdown(card: dict[str, Any]) -> list[str]:
    """Markdown sections for :func:`card_clinical_fields` (operating point, floors, net benefit,
    robustness, leave-one-site-out, FUTURE-AI)."""
    lines = ["", "## Operating point", ""]
    op, cal = card.get("operating_point"), card.get("recalibration")
    if op:
        target = f"{op.get('target')} >= {op['value']}" if op.get("value") is not None else op.get("target")
        lines.append(f"Threshold **{fmt(op.get('threshold'))}** (score >= threshold means positive), chosen for "
                     f"{target} on the {op.get('split', 'validation')} splits of {', '.join(op.get('sites', []))}: "
                     f"sensitivity {fmt(op.get('sensitivity'))}, specificity {fmt(op.get('specificity'))} there.")
    else:
        lines.append("No operating point was recorded for this version: its sensitivity and specificity below "
                     "are at the validation job's fixed threshold.")
    if cal:
        params = f"T = {fmt(cal.get('temperature'))}" if cal.get("method") == "temperature" else \
            f"a = {fmt(cal.get('a'))}, b = {fmt(cal.get('b'))}"
        lines += ["", f"Recalibration: {cal.get('method')} ({params}); pooled validation ECE "
                      f"{fmt(cal.get('before', {}).get('ece'))} -> {fmt(cal.get('after', {}).get('ece'))}, Brier "
                      f"{fmt(cal.get('before', {}).get('brier'))} -> {fmt(cal.get('after', {}).get('brier'))}."]
    lines += ["", "## Safety floors", ""]
    if not card.get("safety_floors"):
        lines.append("No decision about this version yet.")
    for d in card.get("safety_floors", []):
        lines.append(f"Decision log entry {d.get('log_seq')} ({d.get('stage')}): **{str(d.get('decision')).upper()}**")
        if not d["rules"]:
            lines += ["", "No safety floors were evaluated (decision recorded before the policy had them).", ""]
            continue
        lines += ["", "| floor | result | detail |", "|---|---|---|"]
        for r in d["rules"]:
            lines.append(f"| `{r['rule']}` | {'PASS' if r['passed'] else '**FAIL**'} | "
                         f"{str(r.get('detail', '')).replace('|', '/')} |")
        lines.append("")
    for nb in card.get("net_benefit", []):
        pooled = nb["curves"]["pooled"]
        lines += ["", f"## Net benefit ({nb['record']})", "",
                  "Net benefit per study (decision-curve analysis) of this version vs treating everyone:", "",
                  "| site | " + " | ".join(f"t={t:.2f}" for t in pooled["thresholds"]) + " |",
                  "|---|" + "---|" * len(pooled["thresholds"])]
        for site, c in nb["curves"].items():
            lines.append(f"| {site} | "
                         + " | ".join(f"{m:.3f} (all {a:.3f})" for m, a in zip(c["model"], c["treat_all"])) + " |")
    if card.get("robustness"):
        lines += ["", "## Robustness", "", "| site | clean | worst perturbation | change |", "|---|---|---|---|"]
        for site, p in sorted(card["robustness"].items()):
            if p.get("suppressed"):
                lines.append(f"| {site} | suppressed | – | – |")
                continue
            metric = panel_metric(p) or "score"
            worst: tuple[str, dict[str, Any]] = min(p.get("perturbations", {}).items(), key=lambda kv: kv[1]["delta"],
                                                    default=("–", {}))
            lines.append(f"| {site} | {metric.upper()} {fmt(p.get(metric))} | {worst[0]} | "
                         f"{fmt(worst[1].get('delta'))} |")
    if card.get("leave_one_site_out"):
        lines += ["", "## Leave-one-site-out", "", "| held-out site | score without it | with every site |",
                  "|---|---|---|"]
        for site, r in sorted(card["leave_one_site_out"].items()):
            lines.append(f"| {site} | {fmt(r.get('score'))} | {fmt(r.get('full_score'))} |")
    lines += ["", "## FUTURE-AI evidence", "",
              "Principles of the FUTURE-AI guideline (BMJ 2025) against the evidence the framework holds:", "",
              "| principle | evidence | status | detail |", "|---|---|---|---|"]
    for r in card.get("future_ai", []):
        status = r["status"].upper() if r["status"] != "passed" else "passed"
        lines.append(f"| {r['principle']} | {r['evidence']} | {status} | {r['detail'].replace('|', '/')} |")
    return lines


def future_ai_html(cards: dict[str, dict[str, Any]]) -> str:
    """One FUTURE-AI table per model version, status cells coloured."""
    parts = ["<h2 id='future-ai'>FUTURE-AI evidence</h2><p>Per model version, the evidence the framework holds "
             "for each principle of the FUTURE-AI guideline (BMJ 2025): passed, failed or missing.</p>"]
    cls = {"passed": "pass", "failed": "fail", "missing": "missing"}
    for model, card in cards.items():
        rows = card.get("future_ai") or []
        summary = card.get("future_ai_summary") or {}
        parts.append(f"<h3>{html.escape(model)}</h3><p>" + " ".join(
            f"<span class='{cls[s]}'>{html.escape(p)}: {s}</span>" for p, s in summary.items()) + "</p>")
        body = "".join(f"<tr><td>{html.escape(r['principle'])}</td><td>{html.escape(r['evidence'])}</td>"
                       f"<td class='{cls[r['status']]}'>{r['status']}</td><td>{html.escape(r['detail'])}</td></tr>"
                       for r in rows)
        parts.append("<table><thead><tr><th>principle</th><th>evidence</th><th>status</th><th>detail</th></tr>"
                     f"</thead><tbody>{body}</tbody></table>")
    return "\n".join(parts)

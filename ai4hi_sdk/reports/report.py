"""Regenerate model cards and the HTML report of a result folder (``ai4hi report RESULT_DIR``).

A result folder (written by the continuous loop, :mod:`ai4hi_sdk.jobs.continuous`) holds::

    history.json              what happened, in order: train / validate / decide / monitor steps,
                              model versions (sha256, training sites and data, epsilon spent)
    validation-<i>.json       the server's record of each validation job (aggregates from sites)
    monitor-<i>.json          ... of each monitoring job (drift statistics and p-values)
    decisions.jsonl           the signed, hash-chained decision log

and gets::

    report.html               self-contained (plots embedded as base64 PNG), readable by a clinician
    model_cards/<model>.md    one model card per model version: intended use, training sites and
    model_cards/<model>.json  data, privacy spent, per-site and subgroup performance, limitations
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.reports import clinical, plots
from ai4hi_sdk.reports.lineage import card_lineage, lineage_markdown
from ai4hi_sdk.reports.render import fmt as _fmt
from ai4hi_sdk.reports.render import html_figure as _img
from ai4hi_sdk.reports.render import html_table as _table
from ai4hi_sdk.tasks.base import TaskStrategy
from ai4hi_sdk.tasks.registry import strategy_for_reports, task_strategy

HISTORY = "history.json"


def load_history(result_dir: str | Path) -> tuple[dict, dict[str, dict]]:
    """``(history, {record file: record})`` of a result folder; :class:`UserError` if it is not one."""
    result_dir = Path(result_dir)
    path = result_dir / HISTORY
    if not path.is_file():
        raise UserError(f"'{result_dir}' is not a result folder: no {HISTORY} (run 'ai4hi continuous run' first)")
    history = _read_json(path)
    if not isinstance(history, dict) or not isinstance(history.get("steps", []), list):
        raise UserError(f"{path}: not a result history (expected a JSON object with a list of steps)")
    records = {}
    for step in history.get("steps", []):
        if isinstance(step, dict) and step.get("record"):
            file = result_dir / step["record"]
            if not file.is_file():
                raise UserError(f"{path}: step {step.get('kind')} refers to missing file {file.name}")
            records[step["record"]] = _read_json(file)
    return history, records


def _read_json(path: Path) -> Any:
    """JSON of a result file; a corrupt one is a one-line :class:`UserError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: corrupt JSON ({err}); restore it from a copy (nothing was changed)") from None


# ------------------------------------------------------------------ model cards


def model_card(history: dict, records: dict[str, dict], model: str, verification: dict | None = None) -> dict:
    """Model card of ``model`` (a label in ``history["models"]``) as a JSON-able dict; ``verification``
    (of the decision log) feeds the FUTURE-AI table's traceability row."""
    info = history["models"][model]
    card: dict[str, Any] = {
        "model": model,
        "sha256": info.get("sha256"),
        "intended_use": history.get("intended_use", ""),
        "training": info.get("training", {}),
        "privacy": info.get("training", {}).get("privacy", {}),
        "validations": [],
        "decisions": [],
        "limitations": list(history.get("limitations", [])),
        # in clinical use at the end of the loop (a REPLACE decision, every safety floor passed)
        "deployed": history.get("deployed") == model,
    }
    for step in history.get("steps", []):
        if step["kind"] == "validate" and step.get("candidate") == model:
            rec = records[step["record"]]
            strategy = _validation_strategy(step, rec)
            per_site = {}
            for site, rep in sorted((rec.get("validation") or {}).items()):
                cand = rep["candidate"]
                per_site[site] = strategy.card_site(rep)
                if (cand.get("n") or 0) < 50:
                    card["limitations"].append(f"{site}: only {cand.get('n')} test studies in {step['record']}; "
                                               "its intervals are wide")
            for r in rec.get("refused", []) + rec.get("rejected", []):
                card["limitations"].append(f"{r['site']}: no validation result ({r['reason']})")
            card["validations"].append({"record": step["record"], "task": strategy.name,
                                        "champion": step.get("champion"),
                                        "data_version": step.get("data_version"), "sites": per_site,
                                        "k": _record_k(rec)})
        if step["kind"] == "decision" and step.get("candidate") == model:
            card["decisions"].append({k: step.get(k) for k in ("decision", "reasons", "log_seq", "stage")})
    card.update(clinical.card_clinical_fields(history, records, card, verification))
    lineage = card_lineage(history, model)
    if lineage:
        card["lineage"] = lineage
    return card


def _record_k(record: dict) -> Any:
    """The suppression threshold ``k`` in the meta of a validation record's first site report (None without)."""
    first: dict[str, Any] = next(iter(record.get("validation", {}).values()), {})
    return first.get("meta", {}).get("k")


def _validation_strategy(step: dict, record: dict) -> TaskStrategy:
    """The task kind of a validation step: the one the step names (the loop records its job's), else
    that of its site reports (history files of older SDK versions name none)."""
    if step.get("task"):
        return task_strategy(step["task"])
    return strategy_for_reports((record.get("validation") or {}).values())


def _card_validation_strategy(validation: dict) -> TaskStrategy:
    """The task kind of a model card's validation entry (cards of older SDK versions name none: the
    kind whose score their sites show)."""
    if validation.get("task"):
        return task_strategy(validation["task"])
    from ai4hi_sdk.tasks.registry import DEFAULT_TASK, known_tasks

    for name in known_tasks():
        metric = task_strategy(name).metric
        if name != DEFAULT_TASK and metric and any(metric.name in s for s in validation["sites"].values()):
            return task_strategy(name)
    return task_strategy(DEFAULT_TASK)


def model_card_markdown(card: dict) -> str:
    """Markdown rendering of :func:`model_card`."""
    status = ("**deployed** (it passed every replace rule and safety floor at its operating point)"
              if card.get("deployed") else "not deployed")
    lines = [f"# Model card: {card['model']}", "", f"sha256 `{card['sha256']}`", "", f"Status: {status}.", "",
             "## Intended use", "",
             card["intended_use"] or "(not stated)", "", "## Training", ""]
    tr = card["training"]
    lines.append(f"Job `{tr.get('job', '?')}`, {tr.get('rounds', '?')} federated rounds on data version "
                 f"`{tr.get('data_version', '?')}` at sites: {', '.join(tr.get('sites', [])) or '?'}.")
    if tr.get("secure_aggregation"):
        lines += ["", f"Trained with secure aggregation: the server learnt only the total of "
                      f"{_fmt(tr.get('total_train_samples'), 0)} training studies, not each site's."]
    lines += ["", "| site | training studies | epsilon spent (delta) |", "|---|---|---|"]
    for site in tr.get("sites", []):
        eps = card["privacy"].get(site, {})
        lines.append(f"| {site} | {_fmt(tr.get('data', {}).get(site, {}).get('train_samples'), 0)} | "
                     f"{_fmt(eps.get('epsilon'))} ({_fmt(eps.get('delta'), 6)}) |")
    for v in card["validations"]:
        lines += ["", f"## Performance on each site's fixed test split ({v['record']}, vs champion "
                      f"`{v['champion']}`, data `{v['data_version']}`)", ""]
        lines += _card_validation_strategy(v).card_markdown(v)
    lines += clinical.card_clinical_markdown(card)
    lines += ["", "## Update decisions", ""]
    for d in card["decisions"]:
        lines.append(f"* **{d['decision']}** (decision log entry {d['log_seq']}): " + "; ".join(d.get("reasons") or []))
    anchor = card.get("decision_log")
    if anchor:
        lines += ["", f"Decision log anchor: {anchor['entries']} entries, head `{anchor['head']}` (keep a copy of "
                      "this card: `ai4hi audit verify decisions.jsonl --public-key KEY --card <this card>.json` "
                      "then detects a truncated or rewritten log)."]
    lines += lineage_markdown(card.get("lineage"))
    lines += ["", "## Limitations", ""] + [f"* {x}" for x in card["limitations"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ HTML


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f0f0f0}.replace{color:#070}.keep{color:#555}.retrain{color:#b50}figure{display:inline-block;margin:.5em}
figcaption{font-size:12px;color:#555}img{max-width:100%}"""


def html_report(history: dict, records: dict[str, dict], verification: dict | None = None) -> str:
    """Self-contained HTML report (plots inline)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(history.get('name', 'report'))}"
             f"</title><style>{CSS}\n{clinical.CSS}</style></head><body>",
             f"<h1>{html.escape(history.get('name', 'ai4hi report'))}</h1>",
             f"<p>{html.escape(history.get('intended_use', ''))}</p>",
             clinical.safety_panel_html(history), clinical.operating_points_html(history),
             "<p>Everything below was computed from aggregates the sites sent (no image, label or per-patient "
             "prediction left a site). Subgroup cells and calibration bins with fewer than k studies were "
             "suppressed at the site.</p>", "<h2 id='timeline'>Timeline and decisions</h2>"]
    rows = []
    for i, step in enumerate(history.get("steps", [])):
        what = {"train": lambda s: f"trained {s.get('model')} on data {s.get('data_version')}",
                "validate": lambda s: f"{s.get('candidate')} vs champion {s.get('champion')} at every site",
                "monitor": lambda s: f"drift of data {s.get('data_version')} vs reference, model {s.get('model')}",
                "decision": lambda s: f"{s.get('decision', '').upper()}: " + "; ".join(s.get("reasons", [])[:3]),
                "inject_drift": lambda s: s.get("description", ""),
                "leave_one_site_out": lambda s: f"{s.get('model')}'s recipe trained without each of "
                                                f"{', '.join(s.get('sites', []))}, validated where it never trained "
                                                f"({s.get('record')})"}.get(step["kind"], lambda s: "")(step)
        rows.append([str(i + 1), step["kind"], what])
    parts.append(_table(["#", "step", "what"], rows))
    if verification is not None:
        status = "intact" if verification.get("intact") else \
            f"TAMPERED at line {verification.get('bad_line')}: {verification.get('reason')}"
        if verification.get("intact") and verification.get("reason"):
            status += f" ({verification['reason']})"
        if verification.get("intact") and not verification.get("pinned_key"):
            status += ("; signatures checked against the signer the log names, which is not a trust anchor: "
                       "an auditor runs 'ai4hi audit verify' with the lead's pinned public key")
        parts.append(f"<p>Decision log <code>{html.escape(str(history.get('decision_log')))}</code>: "
                     f"{verification.get('entries')} signed entries, {html.escape(status)}.</p>")
    pooled_by_validation: dict[str, dict | None] = {}
    steps = history.get("steps", [])
    for i, step in enumerate(steps):
        if step["kind"] == "validate":
            nxt = next((s for s in steps[i + 1:] if s["kind"] == "decision"), None)
            pooled_by_validation[step["record"]] = (nxt or {}).get("pooled")
    monitors = []
    for step in steps:
        if step["kind"] == "validate":
            rec = records[step["record"]]
            val = rec.get("validation") or {}
            title = f"{step['candidate']} vs {step['champion']} ({step['record']})"
            parts.append(f"<h2>Validation: {html.escape(title)}</h2>")
            parts += _validation_strategy(step, rec).report_html(val, pooled_by_validation.get(step["record"]))
        if step["kind"] == "monitor":
            drift = records[step["record"]].get("drift") or {}
            monitors.append((step.get("label", step["record"]), drift))
            parts.append(f"<h2>Drift monitoring ({html.escape(step['record'])})</h2>")
            drows = []
            for site, rep in sorted(drift.items()):
                for test, r in sorted(rep.get("tests", {}).items()):
                    drows.append([site, test, _fmt(r.get("statistic"), 4), f"{r.get('p_value', float('nan')):.3g}",
                                  "ALARM" if test in rep.get("triggered", {}) else ""])
            parts.append(_table(["site", "test", "statistic", "p-value", ""], drows))
            if drift:
                parts.append(_img(plots.drift_tests_plot(drift, "drift tests"), "drift tests per site"))
    if monitors:
        parts.append("<h2>Drift over time</h2>" + _img(plots.drift_plot(monitors), "drift over time"))
    parts.append(clinical.future_ai_html({m: model_card(history, records, m, verification)
                                          for m in history.get("models", {})}))
    parts.append("<h2>Model cards</h2><ul>" + "".join(
        f"<li><a href='model_cards/{html.escape(m)}.md'>{html.escape(m)}</a> "
        f"(<a href='model_cards/{html.escape(m)}.json'>JSON</a>)</li>" for m in history.get("models", {})) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def verify_decision_log(log: Path, public_key: Any = None) -> dict[str, Any] | None:
    """The decision log's verification for the report, or None without a log. Without a pinned
    ``public_key`` the signatures are checked against the signer the log names (``pinned_key``:
    false), which shows consistency, not authorship."""
    from ai4hi_sdk.validation.decision_log import claimed_signer, verify_log

    if not log.is_file():
        return None
    key = public_key if public_key is not None else claimed_signer(log)
    if key is None:
        return {"ok": False, "intact": False, "entries": 0, "bad_line": 1, "reason": "entry is not signed",
                "pinned_key": False}
    try:
        check = verify_log(log, key)
    except ValueError:
        return {"ok": False, "intact": False, "entries": 0, "bad_line": 1, "reason": "the signer it names is not a key",
                "pinned_key": False}
    return check.to_dict() | {"pinned_key": public_key is not None}


def generate_reports(result_dir: str | Path, public_key: Any = None) -> dict[str, Any]:
    """Write ``report.html`` and ``model_cards/*`` into ``result_dir``; returns their paths.

    ``public_key``: the decision signer's pinned key (hex or key object) to verify the log with.
    Every card JSON records the verified log's anchor (``decision_log``: entries and head hash).
    """
    result_dir = Path(result_dir)
    history, records = load_history(result_dir)
    log = result_dir / history.get("decision_log", "decisions.jsonl")
    verification = verify_decision_log(log, public_key)
    cards_dir = result_dir / "model_cards"
    cards_dir.mkdir(exist_ok=True)
    cards = {}
    for model in history.get("models", {}):
        card = model_card(history, records, model, verification)
        if verification and verification.get("intact"):
            card["decision_log"] = {"file": log.name, "entries": verification["entries"],
                                    "head": verification["head"], "signer": verification["signer"],
                                    "format": verification["format"]}
        (cards_dir / f"{model}.json").write_text(json.dumps(card, indent=2, sort_keys=True))
        (cards_dir / f"{model}.md").write_text(model_card_markdown(card))
        cards[model] = {"markdown": str(cards_dir / f"{model}.md"), "json": str(cards_dir / f"{model}.json")}
    report = result_dir / "report.html"
    report.write_text(html_report(history, records, verification), encoding="utf-8")
    return {"report": str(report), "model_cards": cards, "decision_log": verification}

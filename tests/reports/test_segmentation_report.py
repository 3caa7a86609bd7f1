"""Reports and model cards of a segmentation validation: Dice/HD95 tables and Dice plots, no crash,
no AUROC-only columns pretending to hold Dice."""

from __future__ import annotations

import json


from ai4hi_sdk.reports.report import generate_reports
from ai4hi_sdk.validation.engine import evidence_from_validation, load_or_create_signing_key, make_decision
from ai4hi_sdk.validation.segmentation_site import site_segmentation_report
from ai4hi_sdk.validation.site_report import flatten_metrics, unflatten_metrics
from ai4hi_sdk.validation.update_policy import UpdatePolicy
from tests.tasks.test_segmentation import _masks


def _site(seed, n=12):
    true, cand, champ, attrs = _masks(seed, n)
    rep = site_segmentation_report(true, cand, champ, attrs, min_count=5, spacing=(2.5, 1.5, 1.5))
    return unflatten_metrics(flatten_metrics(rep))


def test_segmentation_validation_renders(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    validation = {"status": "completed", "validation": {"A": _site(0), "B": _site(1)}, "refused": [], "rejected": []}
    (out / "validation-1.json").write_text(json.dumps(validation))
    ev, notes = evidence_from_validation(validation)
    policy = UpdatePolicy.model_validate({"replace_if": {"min_site_support": 5}, "retrain_if": {"auroc_below": 0.5}})
    decision, entry = make_decision(ev, policy, out / "decisions.jsonl", load_or_create_signing_key(tmp_path / "k.pem"),
                                    parent_model_sha256="0" * 64, model_sha256="1" * 64, job_id="seg/c1")
    history = {
        "name": "segmentation", "intended_use": "testing", "decision_log": "decisions.jsonl",
        "models": {"m0": {"sha256": "0" * 64, "training": {}},
                   "c1": {"sha256": "1" * 64, "training": {"job": "seg", "rounds": 2, "sites": ["A", "B"]}}},
        "steps": [{"kind": "validate", "candidate": "c1", "champion": "m0", "data_version": "v1",
                   "record": "validation-1.json"},
                  {"kind": "decision", "candidate": "c1", "decision": decision.decision, "reasons": decision.reasons,
                   "rules": [r.model_dump() for r in decision.rules],
                   "pooled": decision.pooled, "log_seq": entry["seq"], "stage": "after training", "record": None}],
    }
    (out / "history.json").write_text(json.dumps(history))
    generate_reports(out)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "mean Dice" in page and "forest plot: per-site Dice change" in page and "AUROC (95 % CI)" not in page
    card = json.loads((out / "model_cards" / "c1.json").read_text())
    site_a = card["validations"][0]["sites"]["A"]
    assert site_a["dice"] == validation["validation"]["A"]["candidate"]["dice"] and "auroc" not in site_a
    markdown = (out / "model_cards" / "c1.md").read_text()
    assert "mean Dice" in markdown and "| A | sex |" in markdown and " mm |" in markdown
    assert "AUROC (95 % CI)" not in markdown  # no AUROC table header above the Dice table
    # the candidate's Dice is ~0.94 vs a shifted champion's; the classification floors do not apply to Dice
    assert decision.decision == "replace" and any("Dice" in r for r in decision.reasons)
    assert "not applicable: segmentation evidence (Dice) at A, B has no operating point" in page

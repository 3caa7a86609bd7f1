"""FUTURE-AI evidence table: each principle's rows passed / failed / missing from what a model
version has; missing evidence never reads as passed."""

from __future__ import annotations

from ai4hi_sdk.validation.future_ai import PRINCIPLES, Limits, future_ai_table, principle_status


def _full(**over):
    ev = {
        "model": "c2", "sha256": "ab" * 32, "validation_sites": ["A", "B", "C"], "subgroup_audit_sites": ["A", "B"],
        "rules": [{"rule": r, "passed": True, "detail": ""} for r in (
            "replace_if.max_subgroup_gap_widening", "safety_floor.max_subgroup_sensitivity_gap",
            "safety_floor.sensitivity", "safety_floor.specificity", "safety_floor.max_ece")],
        "leave_one_site_out": {"A": {"score": 0.86, "full_score": 0.9}, "B": {"score": 0.81}},
        "decision_log": {"verified": True, "entries": 3, "model_entries": 1}, "privacy_recorded": True,
        "operating_point": {"threshold": 0.31, "target": "sensitivity", "value": 0.9, "split": "validation"},
        "net_benefit": {"thresholds": [0.1, 0.2], "model": [0.3, 0.2], "treat_all": [0.25, 0.1], "treat_none": [0, 0]},
        "model_card": True, "report": True,
        "robustness": {"A": {"worst_delta": -0.02, "champion_worst_delta": -0.01}},
        "drift_alarms": [], "explanations": {"A": {"n_images": 8, "saliency_in_mask": 0.7}},
    }
    return {**ev, **over}


def _status(rows, evidence):
    return next(r["status"] for r in rows if r["evidence"].startswith(evidence))


def test_everything_present_and_good_passes_every_principle():
    rows = future_ai_table(_full())
    assert [p for p in PRINCIPLES if any(r["principle"] == p for r in rows)] == list(PRINCIPLES)
    assert all(r["status"] == "passed" for r in rows), [r for r in rows if r["status"] != "passed"]
    assert principle_status(rows) == {p: "passed" for p in PRINCIPLES}
    assert "70% of saliency inside the mask" in next(r["detail"] for r in rows if r["principle"] == "explainability")


def test_nothing_is_missing_not_passed():
    rows = future_ai_table({"model": "m0"})
    assert {r["status"] for r in rows} == {"missing"}
    assert principle_status(rows) == {p: "missing" for p in PRINCIPLES}


def test_failures_are_named():
    rows = future_ai_table(_full(
        rules=[{"rule": "safety_floor.sensitivity", "passed": False, "detail": "below the floor at B"},
               {"rule": "safety_floor.max_ece", "passed": True, "detail": ""}],
        leave_one_site_out={"A": {"score": 0.86, "full_score": 0.9}, "B": {"score": 0.6}},
        robustness={"A": {"worst_delta": -0.02, "champion_worst_delta": -0.01},
                    "B": {"worst_delta": -0.09, "champion_worst_delta": -0.01}},
        net_benefit={"thresholds": [0.1, 0.2], "model": [0.3, 0.05], "treat_all": [0.25, 0.1], "treat_none": [0, 0]},
        drift_alarms=["B"], decision_log={"verified": False, "reason": "line 2"}))
    assert _status(rows, "safety floors at every used site") == "failed"
    assert "below the floor at B" in next(r["detail"] for r in rows if r["evidence"].startswith("safety floors"))
    assert _status(rows, "leave-one-site-out") == "failed"
    assert _status(rows, "robustness panel") == "failed"
    assert "brittle at B" in next(r["detail"] for r in rows if r["evidence"].startswith("robustness panel"))
    assert _status(rows, "net benefit") == "failed" and _status(rows, "drift monitoring") == "failed"
    assert _status(rows, "signed lineage") == "failed"
    assert _status(rows, "subgroup gaps") == "missing"  # no subgroup rule in these decisions
    status = principle_status(rows)
    assert status["universality"] == status["robustness"] == status["traceability"] == "failed"
    assert status["fairness"] == "missing" and status["explainability"] == "passed"


def test_limits_are_the_callers():
    ev = _full(robustness={"A": {"worst_delta": -0.04, "champion_worst_delta": -0.04}})
    assert _status(future_ai_table(ev), "robustness panel") == "passed"
    assert _status(future_ai_table(ev, Limits(max_robustness_drop=0.03)), "robustness panel") == "failed"
    one = _full(validation_sites=["A"])
    assert _status(future_ai_table(one), "validated on each site") == "missing"

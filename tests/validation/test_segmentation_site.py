"""Segmentation validation report: aggregates equal to per-case computations, paired Dice change,
subgroup suppression (small cells not named), wire form without per-case values, Dice evidence for
the decision engine."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ai4hi_sdk.validation.decision import decide
from ai4hi_sdk.validation.engine import evidence_from_validation
from ai4hi_sdk.validation.segmentation import segmentation_report
from ai4hi_sdk.validation.segmentation_site import (
    case_dice,
    is_segmentation_report,
    paired_dice_difference,
    segmentation_subgroup_audit,
    site_segmentation_report,
)
from ai4hi_sdk.validation.site_report import REPORT_ROOTS, check_aggregate_payload, flatten_metrics, unflatten_metrics
from ai4hi_sdk.validation.update_policy import UpdatePolicy


def _cases(n=14, seed=0, shape=(8, 12, 12)):
    rng = np.random.default_rng(seed)
    true, good, bad = [], [], []
    for i in range(n):
        t = np.zeros(shape, np.uint8)
        if i != 0:  # case 0: no lesion (Dice undefined)
            z, y, x = rng.integers(2, 6), rng.integers(2, 9), rng.integers(2, 9)
            t[z - 1:z + 2, y - 2:y + 2, x - 2:x + 2] = 1
        g = t.copy()
        g[:, :, :] &= rng.random(shape) > 0.15  # candidate: most of the lesion
        b = np.roll(t, int(rng.integers(1, 3)), axis=int(rng.integers(1, 3)))  # champion: shifted
        true.append(t), good.append(g.astype(np.uint8)), bad.append(b)
    attrs = {"sex": ["F"] * 6 + ["M"] * 6 + ["O"] * 2, "manufacturer": ["GE"] * n}
    return true, good, bad, attrs


def test_report_matches_per_case_metrics_and_has_no_per_case_values():
    true, good, bad, attrs = _cases()
    rep = site_segmentation_report(true, good, bad, attrs, min_count=5, spacing=(2.5, 1.5, 1.5))
    assert is_segmentation_report(rep)
    for role, pred in (("candidate", good), ("champion", bad)):
        expected = segmentation_report(pred, true, spacing=(2.5, 1.5, 1.5))
        got = rep[role]
        assert got["n"] == 14 and got["dice_undefined"] == 1 and got["n_dice"] == 13
        assert got["dice"] == pytest.approx(expected["dice"]) and got["hd95"] == pytest.approx(expected["hd95"])
    d = case_dice(good, true) - case_dice(bad, true)
    d = d[np.isfinite(d)]
    paired = rep["paired"]
    assert paired["n"] == 13 and paired["delta"] == pytest.approx(d.mean())
    assert paired["delta"] == pytest.approx(rep["candidate"]["dice"] - rep["champion"]["dice"])
    half = stats.t.ppf(0.975, 12) * d.std(ddof=1) / np.sqrt(13)
    assert paired["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert rep["meta"]["spacing"] == [2.5, 1.5, 1.5] and rep["meta"]["k"] == 5
    flat = flatten_metrics(rep)
    assert check_aggregate_payload(flat, REPORT_ROOTS) is None
    per_case = {round(float(x), 6) for x in np.concatenate([case_dice(good, true), case_dice(bad, true)])
                if np.isfinite(x) and 0 < x < 1}
    assert not per_case & {round(v, 6) for k, v in flat.items() if not k.startswith("meta")}
    back = unflatten_metrics(flat)
    assert back["candidate"]["dice"] == pytest.approx(rep["candidate"]["dice"])
    # the payload does not grow with the number of cases
    true2, good2, bad2, attrs2 = _cases(n=40, seed=1)
    attrs2 = {"sex": ["F"] * 18 + ["M"] * 18 + ["O"] * 4, "manufacturer": ["GE"] * 40}
    assert len(flatten_metrics(site_segmentation_report(true2, good2, bad2, attrs2, min_count=5))) <= len(flat) + 2


def test_subgroups_suppress_small_cells_without_naming_them():
    true, good, _, attrs = _cases()
    audit = segmentation_subgroup_audit(good, true, attrs, min_count=5)
    # "O" has 2 cases: suppressed; exactly one small cell -> the next smallest ("F" or "M") too
    assert "O" not in audit["sex"]["cells"] and audit["sex"]["suppressed_cells"] == 2
    assert len(audit["sex"]["cells"]) == 1
    (group, cell), = audit["sex"]["cells"].items()
    idx = [i for i, v in enumerate(attrs["sex"]) if v == group]
    assert cell["n"] == 6
    expected = segmentation_report([good[i] for i in idx], [true[i] for i in idx])
    assert cell["dice"] == pytest.approx(expected["dice"])
    assert audit["manufacturer"]["cells"]["GE"]["n"] == 14 and audit["manufacturer"]["suppressed_cells"] == 0
    # a metric defined on fewer than k cases of a shown cell is not shown
    strict = segmentation_subgroup_audit(good, true, {"m": ["GE"] * 14}, min_count=14)
    assert strict["m"]["cells"]["GE"]["dice"] is None and strict["m"]["cells"]["GE"]["n"] == 14


def test_paired_difference_needs_two_cases():
    t = np.zeros((4, 4, 4), np.uint8)
    t[1:3, 1:3, 1:3] = 1
    assert paired_dice_difference([t], [t], [t]) == {"undefined": 1.0}


def test_decision_engine_uses_dice_evidence():
    true, good, bad, attrs = _cases()
    rep = unflatten_metrics(flatten_metrics(site_segmentation_report(true, good, bad, attrs, min_count=5)))
    record = {"validation": {"A": rep, "B": rep}, "refused": [], "rejected": []}
    evidence, notes = evidence_from_validation(record)
    assert [s.metric for s in evidence.sites] == ["dice", "dice"] and not notes
    assert evidence.sites[0].candidate_score == pytest.approx(rep["candidate"]["dice"])
    policy = UpdatePolicy.model_validate({"replace_if": {"min_site_support": 10, "max_subgroup_gap_widening": None},
                                         "retrain_if": {"drift_alarm": True, "auroc_below": 0.3}})
    decision = decide(evidence, policy)
    assert decision.decision == "replace", decision
    assert any("Dice" in r for r in decision.reasons)
    floor = decide(evidence, policy.model_copy(update={"retrain_if": policy.retrain_if.model_copy(
        update={"auroc_below": 0.99})}))
    assert floor.decision == "retrain"
    assert "Dice" in next(r.detail for r in floor.rules if r.rule == "retrain_if.auroc_below")
    # a site with a single lesion case has no paired test: left out with a reason, no crash
    one = unflatten_metrics(flatten_metrics(site_segmentation_report(true[:2], good[:2], bad[:2],
                                                                     {"sex": ["F", "M"]}, min_count=2)))
    evidence, notes = evidence_from_validation({"validation": {"C": one}})
    assert not evidence.sites and "Dice change undefined" in notes[0]


def test_per_case_spacings_are_used_per_case_and_not_stated_in_meta():
    true, good, bad, attrs = _cases()
    spacings = [(2.5, 0.5, 0.5) if i % 2 else (1.0, 0.7, 0.7) for i in range(len(true))]
    rep = site_segmentation_report(true, good, bad, attrs, min_count=5, spacing=spacings)
    expected = segmentation_report(good, true, spacing=spacings)
    assert rep["candidate"]["hd95"] == pytest.approx(expected["hd95"])
    assert rep["candidate"]["hd95"] != pytest.approx(segmentation_report(good, true, spacing=spacings[0])["hd95"])
    assert rep["meta"]["hd95_in_mm"] == 1 and "spacing" not in rep["meta"]
    # a subgroup cell measures its own cases in their own spacings
    idx = [i for i, s in enumerate(attrs["sex"]) if s == "M"]  # F is suppressed alongside O
    cell = rep["candidate"]["subgroups"]["sex"]["cells"]["M"]
    sub = segmentation_report([good[i] for i in idx], [true[i] for i in idx], spacing=[spacings[i] for i in idx])
    assert cell["hd95"] == pytest.approx(sub["hd95"])

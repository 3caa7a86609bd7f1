"""Decision engine fed with what sites send: evidence from validation records (wire form),
drift overlay, and the signed, hash-chained record with lineage."""

from __future__ import annotations

import json

import numpy as np

from ai4hi_sdk.validation.decision_log import public_key_hex, verify_log
from ai4hi_sdk.validation.engine import (
    evidence_from_validation,
    load_or_create_signing_key,
    make_decision,
    with_drift,
)
from ai4hi_sdk.validation.site_report import flatten_metrics, site_validation_report, unflatten_metrics
from ai4hi_sdk.validation.update_policy import UpdatePolicy, load_update_policy

POLICY = UpdatePolicy.model_validate({
    "replace_if": {"min_site_support": 30, "auroc_delta_lower_bound_gt": -0.01, "max_subgroup_gap_widening": 0.02},
    "retrain_if": {"drift_alarm": True, "auroc_below": 0.6},
})


def _site(seed: int, n: int = 600, subgroup_regression: bool = False) -> dict:
    """A site's wire-form report: candidate clearly better than the champion on average; with
    ``subgroup_regression`` the candidate is better only for men (women unchanged)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    # scores N(+-mu, 1) per class, mapped by the true log-odds 2 mu x: calibrated by construction
    champ = 1 / (1 + np.exp(-1.2 * (rng.normal(size=n) + 0.6 * (2 * y - 1))))
    better = 1 / (1 + np.exp(-2.4 * (rng.normal(size=n) + 1.2 * (2 * y - 1))))
    cand = np.where(sex == "M", better, champ) if subgroup_regression else better
    rep = site_validation_report(y, cand, champ, {"sex": sex.tolist()}, champion_threshold=0.4)
    return unflatten_metrics(flatten_metrics(rep))


def record(**sites) -> dict:
    return {"validation": sites, "refused": [], "rejected": []}


def test_replace_on_site_records():
    ev, notes = evidence_from_validation(record(A=_site(0), B=_site(1)))
    assert [s.site for s in ev.sites] == ["A", "B"] and not notes
    assert all(s.score_delta_ci[0] > 0 for s in ev.sites)
    from ai4hi_sdk.validation.decision import decide

    assert decide(ev, POLICY).decision == "replace"


def test_subgroup_regression_in_site_records_blocks_update_good_on_average():
    from ai4hi_sdk.validation.decision import decide

    ev, _ = evidence_from_validation(record(A=_site(0), B=_site(1, subgroup_regression=True)))
    d = decide(ev, POLICY)
    assert ev.sites[1].score_delta > 0.03 and d.pooled["estimate"] > 0.03  # better on average
    assert d.decision == "keep"
    gap = next(r for r in d.rules if r.rule == "replace_if.max_subgroup_gap_widening")
    assert not gap.passed and "B: gap" in gap.detail


def test_drift_overlay_recommends_retraining_and_undefined_sites_are_named():
    from ai4hi_sdk.validation.decision import decide

    one_class = {"candidate": {"n": 40}, "champion": {"n": 40}, "paired": {"undefined": 1.0}}
    rec = record(A=_site(0), B=_site(1), C=one_class)
    rec["refused"].append({"task": "ai4hi_cross_validate", "site": "D", "reason": "job kind not allowed"})
    ev, notes = evidence_from_validation(rec)
    assert [s.site for s in ev.sites] == ["A", "B"]
    assert any("C left out" in n for n in notes) and any("D refused" in n for n in notes)
    drifted = with_drift(ev, {"B": {"alarm": True}, "A": {"alarm": False}})
    d = decide(drifted, POLICY)
    assert d.decision == "retrain" and any("drift alarm at B" in r for r in d.reasons)


def test_signed_record_with_lineage_and_tamper_detection(tmp_path):
    key = load_or_create_signing_key(tmp_path / "keys" / "k.pem")
    assert (tmp_path / "keys" / "k.pem").stat().st_mode & 0o777 == 0o600
    assert load_or_create_signing_key(tmp_path / "keys" / "k.pem").public_key().public_bytes_raw() == \
        key.public_key().public_bytes_raw()
    ev, _ = evidence_from_validation(record(A=_site(0), B=_site(1)))
    log = tmp_path / "decisions.jsonl"
    for i in range(3):
        decision, entry = make_decision(ev, POLICY, log, key, parent_model_sha256="a" * 64, model_sha256=f"{i:064x}",
                                        job_id=f"job/{i}", data_stats={"A": {"test_n": 600}}, epsilon_spent=4.2,
                                        notes=["a note"], extra={"stage": "test"})
        assert entry["seq"] == i and decision.decision == "replace"
    # the public key is kept beside the private key, nothing beside the log
    pub = (tmp_path / "keys" / "k.pub").read_text().strip()
    assert pub == public_key_hex(key) and not (tmp_path / "decisions.jsonl.pub").exists()
    assert verify_log(log, pub).ok
    body = json.loads(log.read_text().splitlines()[1])["record"]["body"]
    assert body["lineage"] == {"parent_model_sha256": "a" * 64, "model_sha256": f"{1:064x}", "job_id": "job/1",
                               "data_stats": {"A": {"test_n": 600}}, "epsilon_spent": 4.2}
    assert body["extra"]["policy"]["replace_if"]["min_site_support"] == 30 and "a note" in body["decision"]["reasons"]
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"replace"', '"keep"', 1)
    log.write_text("\n".join(lines) + "\n")
    check = verify_log(log, pub)
    assert not check.ok and check.bad_line == 2


def test_shipped_policy_loads():
    from pathlib import Path

    policy = load_update_policy(Path(__file__).parents[2] / "jobs" / "update_policy.yaml")
    assert policy.retrain_if.drift_alarm and policy.replace_if.max_subgroup_gap_widening is not None


def test_swap_roles_sees_the_same_evidence_from_the_other_model():
    from ai4hi_sdk.validation.decision import Evidence, OperatingCounts, SiteEvidence
    from ai4hi_sdk.validation.engine import swap_roles

    site = SiteEvidence(site="A", n=40, candidate_score=0.9, champion_score=0.7, score_delta=0.2,
                        score_delta_ci=(0.05, 0.35), score_delta_variance=0.01, candidate_subgroup_gap=0.1,
                        champion_subgroup_gap=0.3, candidate_threshold=0.4, champion_threshold=0.6,
                        candidate_counts=OperatingCounts(tp=18, positives=20, tn=15, negatives=20),
                        champion_counts=OperatingCounts(tp=10, positives=20, tn=12, negatives=20),
                        candidate_ece=0.05, champion_ece=0.2, drift_alarm=True)
    ev = Evidence(sites=[site], candidate_operating_point={"threshold": 0.4}, champion_operating_point={"threshold": 0.6})
    swapped = swap_roles(ev)
    s = swapped.sites[0]
    assert (s.candidate_score, s.champion_score, s.score_delta) == (0.7, 0.9, -0.2)
    assert s.score_delta_ci == (-0.35, -0.05) and s.score_delta_variance == 0.01 and s.drift_alarm
    assert s.candidate_counts.tp == 10 and s.champion_counts.tp == 18 and s.candidate_threshold == 0.6
    assert (s.candidate_ece, s.candidate_subgroup_gap) == (0.2, 0.3)
    assert swapped.candidate_operating_point == {"threshold": 0.6}
    assert swap_roles(swapped) == ev

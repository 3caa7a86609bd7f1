import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ai4hi_sdk.audit.hash_chain import entry_hash
from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.validation.decision import Evidence, decide
from ai4hi_sdk.validation.decision_log import DecisionLog, public_key_hex, verify_log
from ai4hi_sdk.validation.update_policy import UpdatePolicy, load_update_policy

POLICY = UpdatePolicy.model_validate({
    "replace_if": {"min_site_support": 30, "auroc_delta_lower_bound_gt": -0.01, "max_subgroup_gap_widening": 0.02},
    "retrain_if": {"drift_alarm": True, "auroc_below": 0.75},
})


def site(name, n=100, cand=0.85, champ=0.82, lo=0.005, hi=0.055, cgap=0.05, pgap=0.05, drift=False, var=0.0002,
         ccounts=(45, 50, 40, 50), pcounts=(44, 50, 40, 50), cece=0.05, pece=0.05, csgap=0.05, psgap=0.05):
    """Format-2 evidence of one site; counts are (tp, positives, tn, negatives) at each model's threshold."""
    def counts(c):
        return None if c is None else dict(zip(("tp", "positives", "tn", "negatives"), c))

    return {"site": name, "n": n, "metric": "auroc", "candidate_score": cand, "champion_score": champ,
            "score_delta": cand - champ, "score_delta_ci": [lo, hi], "score_delta_variance": var,
            "candidate_subgroup_gap": cgap, "champion_subgroup_gap": pgap, "drift_alarm": drift,
            "candidate_threshold": 0.3, "champion_threshold": 0.5, "candidate_counts": counts(ccounts),
            "champion_counts": counts(pcounts), "candidate_ece": cece, "champion_ece": pece,
            "candidate_sensitivity_gap": csgap, "champion_sensitivity_gap": psgap}


def rule(d, name):
    return next(r for r in d.rules if r.rule == name)


def test_replace_when_every_rule_passes():
    d = decide({"sites": [site("A"), site("B"), site("C")]}, POLICY)
    assert d.decision == "replace" and d.sites_used == ["A", "B", "C"]
    assert all(r.passed for r in d.rules if r.rule.startswith("replace_if"))
    assert d.pooled["estimate"] == pytest.approx(0.03) and d.pooled["k"] == 3


def test_keep_when_one_site_lower_bound_too_low():
    d = decide({"sites": [site("A"), site("B", lo=-0.04)]}, POLICY)
    assert d.decision == "keep"
    r = rule(d, "replace_if.auroc_delta_lower_bound_gt")
    assert not r.passed and "B: lower bound -0.0400" in r.detail


def test_subgroup_regression_blocks_update_that_looks_good_on_average():
    sites = [site("A", cand=0.90, champ=0.84, lo=0.03, hi=0.09), site("B", cand=0.90, champ=0.84, lo=0.03, hi=0.09,
                                                                     cgap=0.12, pgap=0.04)]
    d = decide({"sites": sites}, POLICY)
    assert d.pooled["ci"][0] > 0.04  # clearly better on average
    assert d.decision == "keep"
    r = rule(d, "replace_if.max_subgroup_gap_widening")
    assert not r.passed and "B: gap 0.0400 -> 0.1200 (+0.0800)" in r.detail
    assert any("max_subgroup_gap_widening failed" in reason for reason in d.reasons)


def test_small_sites_excluded_and_said_so():
    d = decide({"sites": [site("A"), site("tiny", n=12, lo=-0.3)]}, POLICY)
    assert d.decision == "replace" and d.sites_used == ["A"] and d.sites_excluded == ["tiny"]
    assert any("tiny excluded" in r and "n=12" in r for r in d.reasons)
    d2 = decide({"sites": [site("tiny", n=12)]}, POLICY)
    assert d2.decision == "keep" and not rule(d2, "replace_if.min_site_support").passed


def test_drift_alarm_recommends_retraining():
    d = decide({"sites": [site("A"), site("B", drift=True)]}, POLICY)
    assert d.decision == "retrain"
    assert rule(d, "retrain_if.drift_alarm").passed
    assert any("drift alarm at B" in r for r in d.reasons)
    off = POLICY.model_copy(update={"retrain_if": POLICY.retrain_if.model_copy(update={"drift_alarm": False})})
    assert decide({"sites": [site("A"), site("B", drift=True)]}, off).decision == "replace"


def test_performance_floor():
    # candidate not better, champion below the floor -> retrain
    d = decide({"sites": [site("A", cand=0.70, champ=0.72, lo=-0.05, hi=0.01)]}, POLICY)
    assert d.decision == "retrain" and "champion" in rule(d, "retrain_if.auroc_below").detail
    # candidate replaces a weak champion and is itself above the floor -> replace
    d = decide({"sites": [site("A", cand=0.80, champ=0.72, lo=0.03, hi=0.13)]}, POLICY)
    assert d.decision == "replace" and not rule(d, "retrain_if.auroc_below").passed


def test_pooled_rule():
    pol = UpdatePolicy.model_validate({"replace_if": {"pooled_delta_lower_bound_gt": 0.02}})
    assert decide({"sites": [site("A"), site("B")]}, pol).decision == "keep"  # pooled lower bound ~0.01
    assert decide({"sites": [site("A", var=1e-6), site("B", var=1e-6)]}, pol).decision == "replace"


def test_policy_yaml(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("replace_if:\n  min_site_support: 50\nretrain_if:\n  auroc_below: 0.8\n")
    pol = load_update_policy(p)
    assert pol.replace_if.min_site_support == 50 and pol.retrain_if.auroc_below == 0.8
    p.write_text("replace_if:\n  min_site_suport: 50\n")
    with pytest.raises(ConfigError) as err:
        load_update_policy(p)
    assert err.value.problems[0][0] == "replace_if.min_site_suport"


def _log(tmp_path, key):
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, key)
    for i in range(3):
        ev = Evidence.model_validate({"sites": [site("A"), site("B")]})
        log.append(decide(ev, POLICY), ev, parent_model_sha256="ab" * 32, model_sha256=f"{i:064x}",
                   job_id=f"job-{i}", data_stats={"A": {"n": 100}}, epsilon_spent=1.5)
    return path


def test_signed_log_verifies(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = _log(tmp_path, key)
    check = verify_log(path, key.public_key())
    assert check.ok and check.entries == 3
    assert verify_log(path, public_key_hex(key)).ok
    rec = json.loads(path.read_text().splitlines()[0])["record"]["body"]
    assert rec["lineage"]["epsilon_spent"] == 1.5 and rec["decision"]["decision"] == "replace"


def test_tampering_detected(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = _log(tmp_path, key)
    lines = path.read_text().splitlines()
    # edit line 2's decision and re-hash the chain from there: chain ok, signature fails at line 2
    prev = json.loads(lines[0])["hash"]
    for i in range(1, 3):
        entry = json.loads(lines[i])
        entry["prev"] = prev
        if i == 1:
            entry["record"]["body"]["decision"]["decision"] = "keep"
        entry["hash"] = entry_hash(entry["seq"], prev, entry["record"])
        prev = entry["hash"]
        lines[i] = json.dumps(entry, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    check = verify_log(path, key.public_key())
    assert not check.ok and check.bad_line == 2 and "signature" in check.reason
    # an edit without re-hashing is caught by the chain
    path2 = _log(tmp_path / "b", key)
    text = path2.read_text().splitlines()
    text[2] = text[2].replace('"job-2"', '"job-X"')
    path2.write_text("\n".join(text) + "\n")
    check = verify_log(path2, key.public_key())
    assert not check.ok and check.bad_line == 3
    # wrong key
    assert verify_log(_log(tmp_path / "c", key), Ed25519PrivateKey.generate().public_key()).bad_line == 1


def test_evidence_from_site_results_end_to_end():
    import numpy as np

    from ai4hi_sdk.validation.classification import paired_auroc_difference
    from ai4hi_sdk.validation.decision import SiteEvidence
    from ai4hi_sdk.validation.subgroups import subgroup_audit

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    champ = rng.normal(size=n) + 1.0 * y
    # candidate: much better for M, unchanged for F -> better on average, subgroup gap widens
    cand = np.where(sex == "M", rng.normal(size=n) * 0.3 + 1.0 * y, champ)
    paired = paired_auroc_difference(y, cand, champ)
    ev = SiteEvidence.from_results(
        "A", paired,
        candidate_audit=subgroup_audit(y, cand, {"sex": sex.tolist()}),
        champion_audit=subgroup_audit(y, champ, {"sex": sex.tolist()}),
    )
    assert ev.score_delta > 0 and ev.score_delta_ci[0] > -0.01
    d = decide(Evidence(sites=[ev]), POLICY)
    assert d.decision == "keep" and not rule(d, "replace_if.max_subgroup_gap_widening").passed

"""Site budget and privacy ledger: refusal path, no overspend, composition across jobs, tamper detection."""

import json
import math
import threading

import pytest

from ai4hi_sdk.audit.hash_chain import verify_chain
from ai4hi_sdk.privacy.dp.accountants import AccountingError, InvalidPrivacyParameter, PRVAccountant, RDPAccountant
from ai4hi_sdk.privacy.dp.budget import PRIVACY_STATE_DIR, BudgetExceeded, PrivacyBudget
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.config.site_policy import SitePrivacyPolicy

SIGMA, Q, STEPS = 1.0, 0.02, 50


def _policy(**kw):
    return SitePrivacyPolicy(**{"max_epsilon_per_dataset": 3.0, **kw})


def test_check_does_not_spend_and_commit_persists_across_jobs(tmp_path):
    budget = PrivacyBudget(tmp_path / "state", _policy())
    decision = budget.check_round("cxr", SIGMA, Q, STEPS)
    assert decision.allowed and decision.epsilon_before == 0.0 and decision.limit == 3.0
    assert decision.epsilon_after == pytest.approx(RDPAccountant([(SIGMA, Q, STEPS)]).get_epsilon(1e-5))
    assert budget.epsilon_spent("cxr") == 0.0 and not (tmp_path / "state").exists()

    committed = budget.commit_round("cxr", SIGMA, Q, STEPS)  # job 1, round 1
    assert committed == decision
    # a new process / job on the same dataset sees the spend
    job2 = PrivacyBudget(tmp_path / "state", _policy())
    assert job2.epsilon_spent("cxr") == pytest.approx(decision.epsilon_after)
    job2.commit_round("cxr", 1.5, 0.05, 20)
    expected = RDPAccountant([(SIGMA, Q, STEPS), (1.5, 0.05, 20)]).get_epsilon(1e-5)
    assert PrivacyBudget(tmp_path / "state", _policy()).epsilon_spent("cxr") == pytest.approx(expected, rel=1e-12)
    assert job2.remaining("cxr") == pytest.approx(3.0 - expected)
    # other datasets are independent; state files are JSON, no temp files left behind
    assert job2.epsilon_spent("other") == 0.0
    assert job2.datasets() == ["cxr"]
    files = sorted(p.name for p in (tmp_path / "state").iterdir() if p.suffix == ".json")
    assert len(files) == 1 and not list((tmp_path / "state").glob(".*tmp"))
    state = json.loads((tmp_path / "state" / files[0]).read_text())
    assert state["dataset_id"] == "cxr" and state["rounds"] == 2 and state["accountant"]["mechanism"] == "rdp"


def test_tiny_budget_refuses_the_round_that_would_exceed_and_ledger_never_overspends(tmp_path):
    policy = _policy(max_epsilon_per_dataset=1.0)
    budget, ledger = PrivacyBudget(tmp_path / PRIVACY_STATE_DIR, policy), PrivacyLedger(tmp_path / PRIVACY_LEDGER)
    sigma, q, steps = 2.0, 0.05, 20
    history = []
    for round_index in range(50):
        decision = budget.check_round("ds", sigma, q, steps)
        if not decision.allowed:
            ledger.record_decision(decision, job_id="job-a", round_index=round_index)
            break
        decision = budget.commit_round("ds", sigma, q, steps)
        history.append((sigma, q, steps))
        ledger.record_decision(decision, job_id="job-a", round_index=round_index, egress={"sha256": "x" * 64})
    else:
        pytest.fail("the budget never refused")
    spent_rounds = len(history)
    assert spent_rounds >= 1
    # the refused round really would have exceeded; the last spent one did not
    assert RDPAccountant(history).get_epsilon(1e-5) <= 1.0
    assert RDPAccountant(history + [(sigma, q, steps)]).get_epsilon(1e-5) > 1.0
    assert "> its limit 1" in decision.reason and decision.epsilon_after > 1.0
    # refusing left the state alone
    assert budget.epsilon_spent("ds") == pytest.approx(RDPAccountant(history).get_epsilon(1e-5))
    with pytest.raises(BudgetExceeded) as info:
        budget.commit_round("ds", sigma, q, steps)
    assert not info.value.decision.allowed

    records = ledger.records()
    assert [r["status"] for r in records] == ["spent"] * spent_rounds + ["refused"]
    for record in records:
        assert record["epsilon_after"] <= record["limit"] == 1.0
    refused = records[-1]
    assert refused["epsilon_after"] == refused["epsilon_before"] and refused["epsilon_projected"] > 1.0
    assert refused["reason"] and refused["egress"] is None
    summary = ledger.summary(policy)["ds"]
    assert summary.spent == pytest.approx(budget.epsilon_spent("ds")) and summary.spent <= summary.limit == 1.0
    assert summary.rounds == spent_rounds and summary.refused == 1 and summary.jobs == ["job-a"]
    assert summary.remaining == pytest.approx(1.0 - summary.spent) and summary.violations == []
    assert ledger.verify().ok and ledger.verify().entries == spent_rounds + 1


def test_ledger_refuses_to_write_an_overspend(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    common = dict(job_id="j", dataset_id="d", round_index=0, sample_rate=0.1, noise_multiplier=1.0, steps=10,
                  delta=1e-5, accountant="rdp")
    with pytest.raises(ValueError, match="over the limit"):
        ledger.record_round(**common, epsilon_before=0.5, epsilon_after=1.5, limit=1.0)
    with pytest.raises(ValueError, match="cannot reduce"):
        ledger.record_round(**common, epsilon_before=0.5, epsilon_after=0.4)
    with pytest.raises(ValueError, match="status"):
        ledger.record_round(**common, epsilon_before=0.5, epsilon_after=0.6, status="maybe")
    entry = ledger.record_round(**common, epsilon_before=0.5, epsilon_after=math.inf, status="refused", reason="r")
    assert entry["record"]["epsilon_after"] == 0.5 and entry["record"]["epsilon_projected"] is None
    assert not (tmp_path / "ledger.jsonl").read_text().count("Infinity")


def test_tampered_ledger_line_is_named(tmp_path):
    path = tmp_path / PRIVACY_LEDGER
    ledger = PrivacyLedger(path)
    eps = 0.0
    for i in range(3):
        ledger.record_round(job_id="j1", dataset_id="d", round_index=i, sample_rate=0.1, noise_multiplier=1.0,
                            steps=10, epsilon_before=eps, epsilon_after=eps + 0.3, delta=1e-5, accountant="rdp",
                            limit=2.0)
        eps += 0.3
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["record"]["epsilon_after"] = 0.01  # hide spend
    lines[1] = json.dumps(edited, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    check = ledger.verify()
    assert not check.ok and check.bad_line == 2 and "edited" in check.reason
    assert check == verify_chain(path)
    # only the verified prefix counts
    assert len(ledger.records()) == 1 and len(ledger.records(verified_only=False)) == 3
    assert ledger.summary()["d"].spent == pytest.approx(0.3)


def test_min_noise_and_invalid_inputs(tmp_path):
    budget = PrivacyBudget(tmp_path, _policy(min_noise_multiplier=0.8, max_epsilon_per_dataset=1e6))
    decision = budget.check_round("d", 0.7, 0.01, 10)
    assert not decision.allowed and "below the site minimum 0.8" in decision.reason
    with pytest.raises(BudgetExceeded, match="below the site minimum"):
        budget.commit_round("d", 0.7, 0.01, 10)
    no_min = PrivacyBudget(tmp_path, _policy(min_noise_multiplier=0.0))
    zero = no_min.check_round("d", 0.0, 0.01, 10)
    assert not zero.allowed and zero.epsilon_after == math.inf
    assert zero.to_dict()["epsilon_after"] is None
    for args in [("d", 1.0, 0.0, 10), ("d", -1.0, 0.1, 10), ("d", 1.0, 0.1, 0), ("", 1.0, 0.1, 1)]:
        with pytest.raises(InvalidPrivacyParameter):
            budget.check_round(*args)


def test_per_dataset_limits_and_accountant_switch(tmp_path):
    policy = _policy(datasets={"small": {"max_epsilon": 0.5}})
    budget = PrivacyBudget(tmp_path, policy)
    assert budget.limit("small") == 0.5 and budget.limit("big") == 3.0
    assert not budget.check_round("small", SIGMA, Q, STEPS).allowed
    assert budget.check_round("big", SIGMA, Q, STEPS).allowed
    budget.commit_round("big", SIGMA, Q, STEPS)
    # the admin switches to PRV: the same history is re-accounted, tighter
    prv_budget = PrivacyBudget(tmp_path, _policy(accountant="prv"))
    acc = prv_budget.accountant("big")
    assert isinstance(acc, PRVAccountant) and acc.history == [(SIGMA, Q, STEPS)]
    assert prv_budget.epsilon_spent("big") < budget.epsilon_spent("big")


def test_unreadable_state_fails_closed(tmp_path):
    budget = PrivacyBudget(tmp_path, _policy())
    budget.commit_round("d", SIGMA, Q, STEPS)
    budget.state_path("d").write_text("{not json")
    decision = budget.check_round("d", SIGMA, Q, STEPS)
    assert not decision.allowed and "unreadable" in decision.reason
    with pytest.raises(AccountingError, match="unreadable"):
        budget.commit_round("d", SIGMA, Q, STEPS)


def test_concurrent_commits_cannot_both_spend_the_last_budget(tmp_path):
    one_round = RDPAccountant([(SIGMA, Q, STEPS)]).get_epsilon(1e-5)
    policy = _policy(max_epsilon_per_dataset=one_round * 1.05)  # room for exactly one round
    results = []

    def commit():
        try:
            PrivacyBudget(tmp_path, policy).commit_round("d", SIGMA, Q, STEPS)
            results.append("spent")
        except BudgetExceeded:
            results.append("refused")

    threads = [threading.Thread(target=commit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused"] * 3 + ["spent"]
    assert PrivacyBudget(tmp_path, policy).accountant("d").history == [(SIGMA, Q, STEPS)]


def test_for_site_requires_a_policy(tmp_path):
    from ai4hi_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="file not found"):
        PrivacyBudget.for_site(tmp_path)
    (tmp_path / "ai4hi").mkdir()
    (tmp_path / "ai4hi" / "site_policy.yaml").write_text("max_epsilon_per_dataset: 2\n")
    budget = PrivacyBudget.for_site(tmp_path)
    assert budget.state_dir == tmp_path / "ai4hi" / "privacy_state" and budget.limit("x") == 2.0

"""The ledger is the truth of a site's budget: write-ahead, rebuilt when the state is lost, the larger
spend wins, a damaged or truncated ledger refuses, and a failed check spends nothing."""

from __future__ import annotations

import json

import pytest

from ai4hi_sdk.privacy.dp.accountants import RDPAccountant
from ai4hi_sdk.privacy.dp.budget import PRIVACY_STATE_DIR, BudgetExceeded, PrivacyBudget
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.config.site_policy import SitePrivacyPolicy

SIGMA, Q, STEPS = 1.1, 0.02, 50
DS = "ds-1"


def _budget(ws, limit=10.0):
    policy = SitePrivacyPolicy(max_epsilon_per_dataset=limit, delta=1e-5)
    return PrivacyBudget(ws / PRIVACY_STATE_DIR, policy, PrivacyLedger(ws / PRIVACY_LEDGER))


def _spend(budget, job="j1", round_index=0, sigma=SIGMA):
    def write_ahead(decision):
        budget.ledger.record_decision(decision, job_id=job, round_index=round_index, egress={"sha256": "x"})

    return budget.commit_round(DS, sigma, Q, STEPS, write_ahead=write_ahead)


def _expected(n_rounds, sigma=SIGMA):
    return RDPAccountant(history=[(sigma, Q, STEPS)] * n_rounds).get_epsilon(1e-5)


def test_the_ledger_entry_is_written_before_the_state(tmp_path):
    budget = _budget(tmp_path)
    seen = {}

    def write_ahead(decision):
        seen["state_existed"] = budget.state_path(DS).exists()
        budget.ledger.record_decision(decision, job_id="j", round_index=0)

    budget.commit_round(DS, SIGMA, Q, STEPS, write_ahead=write_ahead)
    assert seen == {"state_existed": False}
    state = json.loads(budget.state_path(DS).read_text())
    assert state["ledger"]["entries"] == 1 and state["ledger"]["head"] == budget.ledger.head()[1]


def test_a_failure_before_the_ledger_entry_spends_nothing(tmp_path):
    """A check that fails after training (here: building the payload's description raises) leaves
    budget and ledger consistent: nothing spent, nothing booked, retries do not burn budget."""
    budget = _budget(tmp_path)

    def failing(decision):
        raise ValueError("secure aggregation: weight above max_samples_per_site")

    for _ in range(3):
        with pytest.raises(ValueError):
            budget.commit_round(DS, SIGMA, Q, STEPS, write_ahead=failing)
    assert budget.epsilon_spent(DS) == 0.0
    assert budget.ledger.records() == [] and not budget.state_path(DS).exists()


def test_a_deleted_state_file_gives_the_budget_from_the_ledger(tmp_path):
    budget = _budget(tmp_path)
    _spend(budget)
    _spend(budget, round_index=1)
    budget.state_path(DS).unlink()
    fresh = _budget(tmp_path)
    assert fresh.epsilon_spent(DS) == pytest.approx(_expected(2), rel=1e-12)
    assert "rebuilt from the ledger" in fresh.discrepancies[DS]
    _spend(fresh, round_index=2)
    assert _budget(tmp_path).epsilon_spent(DS) == pytest.approx(_expected(3), rel=1e-12)


def test_where_state_and_ledger_disagree_the_larger_spend_wins(tmp_path):
    budget = _budget(tmp_path)
    _spend(budget)
    # a state that says more was spent than the ledger shows (e.g. restored from a later backup)
    state = json.loads(budget.state_path(DS).read_text())
    state["accountant"]["history"].append([SIGMA, Q, STEPS])
    budget.state_path(DS).write_text(json.dumps(state))
    fresh = _budget(tmp_path)
    assert fresh.epsilon_spent(DS) == pytest.approx(_expected(2), rel=1e-12)
    assert "the larger is used" in fresh.discrepancies[DS]


def test_a_half_written_last_line_is_a_refusal_with_no_spend(tmp_path):
    budget = _budget(tmp_path)
    _spend(budget)
    ledger = tmp_path / PRIVACY_LEDGER
    before = ledger.read_bytes() + b'{"seq": 1, "prev": "ab'  # a crash or a full disk mid-append
    ledger.write_bytes(before)
    decision = _budget(tmp_path).check_round(DS, SIGMA, Q, STEPS)
    assert not decision.allowed and "privacy ledger damaged" in decision.reason
    with pytest.raises(Exception, match="damaged"):
        _spend(_budget(tmp_path), round_index=1)
    assert ledger.read_bytes() == before, "nothing may be appended after a damaged line"
    assert json.loads(budget.state_path(DS).read_text())["ledger"]["entries"] == 1


def test_a_truncated_ledger_is_detected_through_the_states_anchor(tmp_path):
    budget = _budget(tmp_path)
    _spend(budget)
    _spend(budget, round_index=1)
    ledger = tmp_path / PRIVACY_LEDGER
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text(lines[0])  # a valid chain, one entry short
    decision = _budget(tmp_path).check_round(DS, SIGMA, Q, STEPS)
    assert not decision.allowed and "truncated" in decision.reason
    ledger.unlink()  # the ledger deleted altogether: the same refusal, never a fresh budget
    decision = _budget(tmp_path).check_round(DS, SIGMA, Q, STEPS)
    assert not decision.allowed and "truncated" in decision.reason


def test_a_rewritten_ledger_is_detected(tmp_path):
    budget = _budget(tmp_path)
    _spend(budget)
    ledger = tmp_path / PRIVACY_LEDGER
    ledger.unlink()
    # a forger re-creates a valid chain with a smaller spend
    PrivacyLedger(ledger).record_round(job_id="j1", dataset_id=DS, round_index=0, sample_rate=Q,
                                       noise_multiplier=50.0, steps=1, epsilon_before=0, epsilon_after=0.01,
                                       delta=1e-5, accountant="rdp")
    decision = _budget(tmp_path).check_round(DS, SIGMA, Q, STEPS)
    assert not decision.allowed and "rewritten" in decision.reason


def test_related_datasets_share_their_spend(tmp_path):
    budget = _budget(tmp_path, limit=_expected(1) * 1.1)
    _spend(budget)  # dataset ds-1 spent one round
    grown = "ds-2"  # the same studies plus new ones: a new id, related to ds-1
    assert budget.epsilon_spent(grown, related=[DS]) == pytest.approx(_expected(1), rel=1e-12)
    decision = budget.check_round(grown, SIGMA, Q, STEPS, related=[DS])
    assert not decision.allowed and "limit" in decision.reason
    assert budget.check_round(grown, SIGMA, Q, STEPS).allowed  # only the overlap makes it refuse


def test_budget_exceeded_under_the_lock_writes_no_spend(tmp_path):
    budget = _budget(tmp_path, limit=_expected(1) * 1.01)
    _spend(budget)
    with pytest.raises(BudgetExceeded):
        _spend(budget, round_index=1)
    assert [r["status"] for r in budget.ledger.records()] == ["spent"]


def test_privacy_report_cross_checks_state_and_ledger_and_repair_sets_aside_a_torn_line(tmp_path, capsys):
    from ai4hi_sdk.cli.main import main
    from ai4hi_sdk.config.site_policy import SITE_POLICY

    (tmp_path / SITE_POLICY).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / SITE_POLICY).write_text("max_epsilon_per_dataset: 10.0\n")
    budget = _budget(tmp_path)
    _spend(budget)
    _spend(budget, round_index=1)
    assert main(["privacy", "report", "--site", str(tmp_path)]) == 0
    ledger = tmp_path / PRIVACY_LEDGER
    intact = ledger.read_bytes()
    ledger.write_bytes(intact.splitlines(keepends=True)[0])  # truncated: the chain alone still verifies
    capsys.readouterr()
    assert main(["privacy", "report", "--site", str(tmp_path)]) == 1
    assert "truncated" in " ".join(capsys.readouterr().out.split())

    ledger.write_bytes(intact + b'{"seq": 2, "pre')  # a torn append
    assert main(["privacy", "report", "--site", str(tmp_path)]) == 1
    assert main(["privacy", "repair", "--site", str(tmp_path)]) == 0
    assert ledger.read_bytes() == intact
    assert [p.read_bytes() for p in tmp_path.glob("ai4hi/privacy_ledger.jsonl.torn-*")] == [b'{"seq": 2, "pre']
    assert main(["privacy", "report", "--site", str(tmp_path)]) == 0
    # an edited line in the middle is not "repaired"
    lines = intact.splitlines(keepends=True)
    ledger.write_bytes(lines[0].replace(b'"steps": 50', b'"steps": 5') + lines[1])
    assert main(["privacy", "repair", "--site", str(tmp_path)]) == 2

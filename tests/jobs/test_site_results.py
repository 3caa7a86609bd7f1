"""classify_result: the one place a site's returned result is sorted into refused, dropped, rejected
or accepted (order, records, the common checks), and no server module sorts results itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ai4hi_sdk.jobs.site_results import (MAX_REASON, classify_result, duplicate, metrics_problem, refusal_record,
                                         wrong_round)
from ai4hi_sdk.jobs.wire import DROPPED_KEY, REFUSAL_PRIVACY_KEY, REFUSED_KEY

PACKAGE = Path(__file__).resolve().parents[2] / "ai4hi_sdk"
POSITION = {"dataset_id": "ds-1", "epsilon_spent": 9.5, "epsilon_limit": 10.0, "delta": 1e-5}


class Spy:
    """A check that records that it ran and answers ``reason``."""

    def __init__(self, reason=None):
        self.reason, self.calls = reason, 0

    def __call__(self):
        self.calls += 1
        return self.reason


def test_a_refusal_is_recorded_with_the_sites_reason_and_position_and_nothing_else_runs():
    check = Spy("would reject")
    meta = {"client_name": "hospital-1", REFUSED_KEY: "privacy budget: 9.5 of 10 spent", DROPPED_KEY: True,
            REFUSAL_PRIVACY_KEY: {**POSITION, "extra": "ignored"}}
    result = classify_result(meta, [check], round_index=3)
    assert (result.site, result.outcome, result.rejection) == ("hospital-1", "refused", None)
    assert check.calls == 0  # a refusal carries no work to check
    assert result.refusal.to_json_dict() == {"round": 3, "site": "hospital-1",
                                             "reason": "privacy budget: 9.5 of 10 spent", "privacy": POSITION}
    assert result.reason == "privacy budget: 9.5 of 10 spent"


def test_a_refusal_names_only_what_applies_and_is_cut_at_its_limit():
    result = classify_result({"client_name": "a", REFUSED_KEY: "x" * 5000}, task="ai4hi_monitor")
    assert result.refusal.to_json_dict() == {"task": "ai4hi_monitor", "site": "a", "reason": "x" * MAX_REASON}
    # a privacy position that is not a mapping is not a position; one with a value of the wrong type
    # keeps the refusal and says the position is unreadable
    assert refusal_record("a", {REFUSED_KEY: "no", REFUSAL_PRIVACY_KEY: "9.5"}).privacy is None
    odd = classify_result({"client_name": "a", REFUSED_KEY: "no",
                           REFUSAL_PRIVACY_KEY: {**POSITION, "epsilon_spent": "9.5"}}, round_index=0)
    assert odd.outcome == "refused" and odd.refusal.privacy is None
    assert odd.reason.startswith("no (privacy position unreadable: ") and "epsilon_spent" in odd.reason


def test_a_dropped_site_is_absent_without_a_record():
    check = Spy("would reject")
    result = classify_result({"client_name": "b", DROPPED_KEY: True}, [check], round_index=0)
    assert (result.outcome, result.refusal, result.rejection, check.calls) == ("dropped", None, None, 0)


def test_the_first_failing_check_rejects_and_later_checks_do_not_run():
    first, second, third = Spy(), Spy("wrong shape"), Spy("never asked")
    result = classify_result({"client_name": "c"}, [first, second, third], round_index=1, step="input")
    assert result.outcome == "rejected" and (first.calls, second.calls, third.calls) == (1, 1, 0)
    assert result.rejection.to_json_dict() == {"round": 1, "step": "input", "site": "c", "reason": "wrong shape"}
    accepted = classify_result({"client_name": "c"}, [Spy(), Spy()])
    assert (accepted.outcome, accepted.reason) == ("accepted", None)
    assert classify_result(None).site == "unknown"


def test_the_common_checks():
    assert wrong_round(None, 2)() is None  # a result that names no round is not contradicted
    assert wrong_round(None, 2, required=True)() == "result is for round None, current round is 2"
    assert wrong_round(2, 2)() is None and wrong_round("2", 2)() is None
    assert wrong_round(7, 0, wording="the task was for round")() == "result is for round 7, the task was for round 0"
    assert wrong_round("seven", 0)() == "result is for round seven, current round is 0"
    assert duplicate("a", {"a": 1})() == "second result from the same site" and duplicate("b", {"a": 1})() is None
    assert metrics_problem({"loss": 0.5, "n": 3})() is None and metrics_problem(None)() is None
    assert metrics_problem({"loss": "0.5"})() == "metric 'loss' is str, expected a number"
    assert metrics_problem({"ok": True})() == "metric 'ok' is bool, expected a number"


@pytest.mark.parametrize("module", ["jobs/components/controller.py", "jobs/components/validation_controller.py",
                                    "jobs/components/secagg_server.py", "deploy/results.py"])
def test_no_server_module_sorts_results_itself(module):
    """The refusal and drop markers are read in jobs/site_results.py only: a server module that read
    them would be a second classification."""
    tree = ast.parse((PACKAGE / module).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
            {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & {"REFUSED_KEY", "DROPPED_KEY", "REFUSAL_PRIVACY_KEY"}

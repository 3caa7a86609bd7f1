"""The continuous loop end to end in the real NVFlare simulator (tiny settings: 3 sites, 2 rounds,
32-pixel images; DP-SGD and secure aggregation on): train -> validate (operating point on the
validation splits, then the test splits) -> decide -> new data with drift at one site -> monitor ->
decide -> retrain -> validate -> decide -> report.

Which decision each step takes:

* after monitoring it is RETRAIN, by ``retrain_if.drift_alarm`` at the drifted site (a +0.3
  detector shift and a new vendor there: the alarm is certain);
* after each training it is REPLACE exactly when every replace rule and every safety floor passed
  at the candidate's operating point and no retrain rule fired, and the loop deploys exactly then
  (DP noise makes the tiny models' quality vary from run to run, so the test asserts the rule, not
  the outcome);

and the safety property: after every decision the deployed model is "none" or a model that passed
every safety floor at its operating point, and was not found below one since.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai4hi_sdk.config.continuous import load_continuous_spec
from ai4hi_sdk.jobs.continuous import DECISION_LOG, SIGNING_KEY, run_continuous
from ai4hi_sdk.validation.decision_log import load_public_key, read_entries, verify_log
from ai4hi_sdk.validation.engine import public_key_file

pytestmark = pytest.mark.e2e
LOOP = Path(__file__).resolve().parents[2] / "jobs" / "fixtures" / "tiny_loop.yaml"


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    said: list[str] = []
    out = run_continuous(load_continuous_spec(LOOP), root / "data", root / "ws", say=said.append)
    history = json.loads((root / "ws" / "report" / "history.json").read_text())
    return {"root": root, "out": out, "history": history, "said": said}


def _decisions(history):
    return [s for s in history["steps"] if s["kind"] == "decision"]


def test_the_loop_runs_every_stage_in_order(loop):
    kinds = [s["kind"] for s in loop["history"]["steps"]]
    assert kinds == ["train", "validate", "decision", "inject_drift", "monitor", "decision", "train", "validate",
                     "decision"], kinds
    assert [d["stage"] for d in _decisions(loop["history"])] == ["after training", "after monitoring",
                                                                 "after retraining"]


def test_monitoring_the_drifted_site_decides_retrain(loop):
    step = _decisions(loop["history"])[1]
    assert step["decision"] == "retrain"
    fired = {r["rule"]: r for r in step["rules"]}["retrain_if.drift_alarm"]
    assert fired["passed"] and "hospital-2" in fired["detail"]
    monitor = json.loads((loop["root"] / "ws" / "report" / "monitor-1.json").read_text())
    assert monitor["drift"]["hospital-2"]["alarm"]


@pytest.mark.parametrize("index", [0, 2])
def test_a_candidate_is_deployed_exactly_when_every_rule_and_floor_passed(loop, index):
    step = _decisions(loop["history"])[index]
    rules = step["rules"]
    floors = [r for r in rules if r["rule"].startswith("safety_floor.")]
    assert {r["rule"] for r in floors} == {"safety_floor.sensitivity", "safety_floor.specificity",
                                           "safety_floor.max_subgroup_sensitivity_gap", "safety_floor.max_ece"}
    replace_ok = all(r["passed"] for r in rules if r["rule"].split(".")[0] in ("replace_if", "safety_floor"))
    fired = [r["rule"] for r in rules if r["rule"].split(".")[0] in ("retrain_if", "rollback_if") and r["passed"]]
    expected = "rollback" if any(r.startswith("rollback_if") for r in fired) else \
        "retrain" if fired else "replace" if replace_ok else "keep"
    assert step["decision"] == expected, (step["decision"], step["reasons"])
    assert (step["deployed_after"] == step["candidate"]) == (step["decision"] == "replace")


def test_no_deployed_model_is_ever_below_a_floor(loop):
    history = loop["history"]
    passed_floors: dict[str, bool] = {}
    for step in _decisions(history):
        cand = [r for r in step["rules"] if r["rule"].startswith("safety_floor.")]
        if cand:
            passed_floors[step["candidate"]] = all(r["passed"] for r in cand)
        below = [r for r in step["rules"] if r["rule"].startswith("deployed_safety_floor.") and not r["passed"]]
        deployed = step["deployed_after"]
        if deployed != "none":
            assert passed_floors.get(deployed) is True, (step["stage"], deployed)
            assert not below, (step["stage"], below)
    assert history["deployed"] == loop["out"]["deployed"]
    summary = loop["out"]["summary"]
    if history["deployed"] == "none":
        assert summary[0].startswith("deployed model: none")
    else:  # the summary shows sensitivity and specificity at the deployed model's operating point
        assert summary[0].startswith(f"deployed model: {history['deployed']}: threshold ")
        assert any("sensitivity at its operating point" in line and "pooled" in line for line in summary)
        assert any("specificity at its operating point" in line for line in summary)


def test_each_candidate_carries_its_operating_point_into_validation_and_the_log(loop):
    history, report = loop["history"], loop["root"] / "ws" / "report"
    validations = [s for s in history["steps"] if s["kind"] == "validate"]
    for step in validations:
        model = history["models"][step["candidate"]]
        op = model["operating_point"]
        assert op["split"] == "validation" and op["target"] == "sensitivity" and op["value"] == 0.9
        record = json.loads((report / step["record"]).read_text())
        assert record["operating_points"]["candidate"]["operating_point"]["threshold"] == op["threshold"]
        champ = history["models"][step["champion"]]["operating_point"]
        for rep in record["validation"].values():
            assert rep["meta"]["threshold"] == pytest.approx(op["threshold"])
            assert rep["meta"]["champion_threshold"] == pytest.approx(champ["threshold"])
            assert "robustness" in rep["candidate"] and rep["candidate"]["explanations"]["n_images"] == 2
    # the second validation judged the champion at the threshold its version got the first time
    second = json.loads((report / validations[1]["record"]).read_text())
    assert second["operating_points"]["champion"]["source"] == "the model version's record"
    log = report / DECISION_LOG
    key = load_public_key(public_key_file(loop["root"] / "ws" / SIGNING_KEY), log=log)
    assert verify_log(log, key).ok
    entries = [e["record"]["body"] for e in read_entries(log)]
    assert len(entries) == 3
    for body, step in zip(entries, _decisions(history)):
        assert body["decision"]["decision"] == step["decision"]
        cand = history["models"][step["candidate"]].get("operating_point")
        if step["stage"] != "after monitoring":
            assert body["extra"]["operating_points"]["candidate"]["threshold"] == cand["threshold"]


def test_the_report_cards_and_live_metrics_are_written(loop):
    report = loop["root"] / "ws" / "report"
    out = loop["out"]
    assert Path(out["report"]).is_file() and set(out["model_cards"]) == {"m0-initial", "c1", "c2"}
    card = json.loads(Path(out["model_cards"]["c1"]["json"]).read_text())
    assert {r["principle"] for r in card["future_ai"]} == {"fairness", "universality", "traceability", "usability",
                                                           "robustness", "explainability"}
    assert card["robustness"] and card["operating_point"]["split"] == "validation"
    for label in ("c1", "c2"):  # what the server streamed to TensorBoard during each training job
        assert list((report / "tensorboard" / label).glob("events.out.tfevents.*"))

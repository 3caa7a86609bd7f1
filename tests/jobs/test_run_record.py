"""The typed run records: a record of the shape the SDK writes (and wrote before the records were
typed) loads and is written back unchanged; what the SDK writes is checked strictly; a bad record
is named with its file and field."""

from __future__ import annotations

import copy
import json

import pytest

from ai4hi_sdk.jobs.run_record import (RecordError, Refusal, RoundRecord, TrainingRunRecord, ValidationRecord,
                                       as_training_record)

VAL = {"val_auroc": 0.71, "val_loss": 0.62, "val_samples": 20.0}

#: a plain DP job as ai4hi job simulate wrote it (every key the server and the collector write)
PLAIN = {
    "status": "completed", "reason": "2 rounds", "sites": ["hospital-1", "hospital-2"], "num_rounds": 2, "min_sites": 2,
    "rounds": [
        {"round": 0, "status": "completed", "seconds": 3.2, "weights": {"hospital-1": 40, "hospital-2": 36},
         "sites": {"hospital-1": {"train_loss": 0.7, "train_samples": 40, "dp_epsilon": 1.1, "dp_delta": 1e-5},
                   "hospital-2": {"train_loss": 0.69, "train_samples": 36, "dp_epsilon": 1.2, "dp_delta": 1e-5}},
         "global_validation": {"sites": {"hospital-1": VAL, "hospital-2": VAL}, "weighted_mean": VAL}},
        {"round": 1, "status": "completed", "seconds": 2.9, "weights": {"hospital-1": 40}, "sites": {
            "hospital-1": {"train_loss": 0.6, "dp_epsilon": 2.0, "dp_delta": 1e-5}},
         "global_validation": {"sites": {"hospital-1": VAL}, "weighted_mean": VAL}}],
    "refused": [{"round": 1, "site": "hospital-2", "reason": "privacy budget: 9.8 of 10 spent",
                 "privacy": {"dataset_id": "ds-2", "epsilon_spent": 9.8, "epsilon_limit": 10.0, "delta": 1e-5}}],
    "rejected": [{"round": 0, "site": "hospital-3", "reason": "'w' contains NaN or infinity"}],
    "initial_model": {"source": "seeded (the spec's train.seed)", "sha256": "ab" * 32},
    "exchange": {"tensors": 4.0, "elements": 100.0, "bytes": 400.0, "full_model_elements": 100.0, "percent": 100.0},
    "final_validation": {"sites": {"hospital-1": VAL}, "weighted_mean": VAL},
    "global_model": "global_model.pt", "receipt_log": "receipts.jsonl", "tensorboard": "tensorboard",
    "egress_logs": {"hospital-1": {"copy": "egress/hospital-1.jsonl", "site_log": "/ws/sites/hospital-1/x.jsonl"}},
    "privacy": {"hospital-1": {"ledger": "privacy/hospital-1.jsonl", "chain_ok": True, "datasets": {
        "ds-1": {"epsilon_spent": 2.0, "rounds": 2, "refused": 0, "delta": 1e-5}}}},
    "site_policies": {"hospital-1": "kept /ws/sites/hospital-1/ai4hi/site_policy.yaml"},
    "initial_model_file": "/models/champion.pt", "initial_model_file_sha256": "cd" * 32,
}

#: a secure-aggregation job downloaded from a deployment, its last round abandoned
SECURE = {
    "status": "stopped", "reason": "round 1: 2 masked inputs, the job needs 3; nothing individual was revealed",
    "sites": ["a", "b", "c"], "num_rounds": 2, "min_sites": 3,
    "rounds": [{"round": 0, "status": "completed", "seconds": 5.0, "sites": {"a": {"dp_epsilon": 1.0}, "b": {}, "c": {}},
                "dropped": [], "total_weight": 120, "threshold": 3, "consortium_metrics": {"train_loss": 0.5},
                "quantisation_error_bound": 1.2e-5},
               {"round": 1, "status": "abandoned", "reason": "round 1: 2 masked inputs, the job needs 3"}],
    "refused": [{"round": 1, "site": "c", "reason": "threshold t=2 is below this site's floor 3"}],
    "rejected": [],
    "secure_aggregation": {"clip": 1.0, "payload_length": 1234, "max_samples_per_site": 100,
                           "rejected": [{"round": 0, "site": "b", "step": "input", "reason": "duplicate"}],
                           "server_checks_signatures": True},
    "privacy": {"a": {"source": "reported by the site with its updates or refusals; its ledger stays at the site",
                      "chain_ok": None, "ledger": None, "datasets": {"reported": {
                          "epsilon_spent": 1.0, "epsilon_limit": None, "epsilon_remaining": None, "delta": None,
                          "rounds": 1, "refused": 0}}}},
    "job_id": "5f0c", "nvflare_status": "FINISHED:COMPLETED", "egress_logs": {}, "server_download": "/dl/5f0c",
}

VALIDATION = {
    "status": "completed", "sites": ["a", "b"], "tasks": ["validate"], "champion_sha256": "ef" * 32,
    "candidate_sha256": "01" * 32, "refused": [{"task": "ai4hi_cross_validate", "site": "b", "reason": "no"}],
    "rejected": [{"task": "ai4hi_operating_point", "site": "a", "reason": "no result before the timeout"}],
    "operating_points": {"candidate": {"source": "chosen from the validation histograms of 1 site(s)",
                                       "operating_point": {"threshold": 0.4, "target": "sensitivity"},
                                       "calibration": None, "calibration_error": "one class"},
                         "champion": {"source": "the model version's record", "operating_point": {"threshold": 0.5},
                                      "calibration": {"a": 1.0, "b": 0.0}}},
    "operating_point_seconds": 1.5, "validation": {"a": {"candidate": {"auroc": 0.8, "n": 30}, "meta": {}}},
    "validation_seconds": 2.0, "receipt_log": "receipts.jsonl", "egress_logs": {}, "seconds": 31.0,
}


@pytest.mark.parametrize("model,record", [(TrainingRunRecord, PLAIN), (TrainingRunRecord, SECURE),
                                          (ValidationRecord, VALIDATION)])
def test_a_written_record_loads_and_is_written_back_unchanged(model, record):
    loaded = model.load(copy.deepcopy(record))
    assert loaded.to_json_dict() == record
    assert json.loads(loaded.to_json()) == record


def test_fields_read_as_typed_values():
    plain, secure = TrainingRunRecord.load(PLAIN), as_training_record(SECURE)
    assert [r.round for r in plain.completed_rounds()] == [0, 1]
    assert plain.rounds[0].global_validation.weighted_mean["val_auroc"] == 0.71
    assert plain.refused[0].privacy.epsilon_limit == 10.0 and plain.refused_in(1) == plain.refused
    assert plain.privacy["hospital-1"].datasets["ds-1"].rounds == 2 and plain.privacy["hospital-1"].chain_ok
    assert secure.rounds[1].total_weight is None and secure.secure_aggregation.rejected[0].step == "input"
    assert isinstance(plain.rounds[0].sites["hospital-1"]["train_samples"], int)  # an int stays an int on disk
    validation = ValidationRecord.load(VALIDATION)
    assert validation.operating_points["candidate"].calibration_error == "one class"
    assert validation.refused[0].task == "ai4hi_cross_validate" and validation.refused[0].round is None


def test_a_record_keeps_the_keys_of_another_version():
    newer = {**PLAIN, "carbon_grams": 12.5, "rounds": [{**PLAIN["rounds"][0], "gpu": "H200"}]}
    assert TrainingRunRecord.load(newer).to_json_dict() == newer


def test_what_is_set_is_written_and_nothing_else():
    record = TrainingRunRecord(status="running", sites=["a"], rounds=[], refused=[], rejected=[])
    record.rounds.append(RoundRecord(round=0, status="abandoned", sites={}))
    record.refused.append(Refusal(round=0, site="a", reason="policy"))
    record.status, record.reason = "stopped", "round 0: 0 good site results"
    assert record.to_json_dict() == {"status": "stopped", "reason": "round 0: 0 good site results", "sites": ["a"],
                                     "rounds": [{"round": 0, "status": "abandoned", "sites": {}}],
                                     "refused": [{"round": 0, "site": "a", "reason": "policy"}], "rejected": []}


@pytest.mark.parametrize("change,field", [
    (lambda r: r.update(status="done"), "status"),
    (lambda r: r.pop("status"), "status"),
    (lambda r: r["rounds"][0].update(round="0"), "rounds.0.round"),
    (lambda r: r["rounds"][0]["sites"]["hospital-1"].update(train_loss="0.7"), "rounds.0.sites.hospital-1.train_loss"),
    (lambda r: r["refused"][0].pop("reason"), "refused.0.reason"),
    (lambda r: r["privacy"]["hospital-1"].update(chain_ok="yes"), "privacy.hospital-1.chain_ok"),
])
def test_a_record_that_does_not_match_is_named_with_its_file_and_field(tmp_path, change, field):
    bad = copy.deepcopy(PLAIN)
    change(bad)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(RecordError) as info:
        TrainingRunRecord.read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a valid TrainingRunRecord (") and field in message
    assert "\n" not in message


def test_an_unreadable_record_is_named(tmp_path):
    with pytest.raises(RecordError, match="cannot read the record"):
        TrainingRunRecord.read(tmp_path / "missing.json")
    (tmp_path / "cut.json").write_text('{"status": "runn')
    with pytest.raises(RecordError, match="cut.json: cannot read the record"):
        TrainingRunRecord.read(tmp_path / "cut.json")
    with pytest.raises(RecordError, match="expected a JSON object, got list"):
        TrainingRunRecord.load([PLAIN])


def test_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "ai4hi_metrics.json"
    path.write_text("old")
    TrainingRunRecord.load(SECURE).write(path)
    assert json.loads(path.read_text()) == SECURE and [p.name for p in tmp_path.iterdir()] == [path.name]

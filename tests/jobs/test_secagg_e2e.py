"""End-to-end (real simulator) secure aggregation: the global model equals plain FedAvg within the
stated quantisation bound, a site dropped after the share phase is recovered, too many drops abandon
the round without any unmasking, only uint32/uint8 protocol payloads ever reach the server, and
DP-SGD + client-level DP + secure aggregation run together."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ai4hi_sdk.audit.hash_chain import read_entries
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.privacy.dp.ledger import PrivacyLedger
from ai4hi_sdk.trainers.classification import ClassificationTrainer

pytestmark = pytest.mark.e2e
SITES = ["hospital-1", "hospital-2", "hospital-3"]
NO_DP_POLICY = "tests/jobs/fixtures/policy_without_dp.yaml"
MAX_SAMPLES = 40


def _spec(secure: bool, rounds: int = 1, privacy: dict | None = None) -> JobSpec:
    privacy = dict(privacy or {})
    if secure:
        privacy["secure_aggregation"] = {"clip": 1.0, "max_samples_per_site": MAX_SAMPLES}
    return JobSpec(name="secagg-e2e", min_sites=2,
                   model={"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
                   train={"rounds": rounds, "local_epochs": 1, "batch_size": 8, "lr": 0.01, "optimizer": "adam",
                          "threads": 1},
                   data={"image_size": 32}, privacy=privacy)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("secagg")
    for index, site in enumerate(SITES):  # unequal sizes: a wrong weighting would show
        synth_site(root / "data" / site, site_index=index, n_studies=20 + 10 * index, seed=5)
    return root


def _run(data, name, spec, **kw):
    result = simulate(spec, data / "data", data / name, timeout_s=300, site_policy=kw.pop("policy", NO_DP_POLICY), **kw)
    return result, torch.load(result.result_dir / "global_model.pt")


def _receipts(result):
    return [e["record"] for e in read_entries(result.result_dir / "receipts.jsonl")]


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _tolerance(metrics, state):
    """The quantisation bound the server reports, plus float32 rounding of adding it to the model."""
    bound = metrics["rounds"][0]["quantisation_error_bound"]
    return bound + 2 * float(np.finfo(np.float32).eps) * max(v.abs().max().item() for v in state.values())


@pytest.fixture(scope="module")
def plain(data):
    return _run(data, "plain", _spec(False))


@pytest.fixture(scope="module")
def secure(data):
    return _run(data, "secure", _spec(True))


def test_secure_aggregation_equals_plain_fedavg_within_the_bound(plain, secure):
    (p_result, p_model), (s_result, s_model) = plain, secure
    assert p_result.metrics["status"] == s_result.metrics["status"] == "completed", s_result.metrics
    tol = _tolerance(s_result.metrics, s_model)
    assert 0 < s_result.metrics["rounds"][0]["quantisation_error_bound"] < 1e-5
    initial = ClassificationTrainer(_spec(True), site_dir=None, site_name="t", device="cpu").initial_state()
    assert _max_diff(s_model, initial) > 100 * tol  # the round moved the model far more than the tolerance
    assert _max_diff(s_model, p_model) <= tol
    assert s_result.metrics["rounds"][0]["total_weight"] == sum(
        p_result.metrics["rounds"][0]["weights"].values())


def test_server_only_receives_masked_integers_and_consortium_metrics(secure):
    result, _ = secure
    receipts = _receipts(result)
    tasks = {r["task"] for r in receipts}
    assert {"ai4hi_secagg_keys", "ai4hi_secagg_shares", "train", "ai4hi_secagg_unmask"} <= tasks
    for record in receipts:
        if record["task"] == "validate":
            continue  # final validation metrics of the global model, per site by design
        assert record["metric_names"] == [], record  # secure metrics: nothing per site in the clear
        assert {t["dtype"] for t in record["tensors"]} <= {"uint8", "uint32"}, record
        if record["task"] == "train":  # one round: no next-round keys ride along
            assert [(t["name"], t["dtype"]) for t in record["tensors"]] == [("secagg_masked", "uint32")]
    # what the sites logged as leaving equals what the server logged as arriving, hash for hash
    sent = {(r["site"], r["task"], r["sha256"]) for site in SITES
            for r in (e["record"] for e in read_entries(result.result_dir / "egress" / f"{site}.jsonl"))}
    assert {(r["site"], r["task"], r["sha256"]) for r in receipts} == sent
    consortium = result.metrics["rounds"][0]["consortium_metrics"]
    assert 0 < consortium["train_loss"] < 10 and "train_samples" in consortium


@pytest.fixture(scope="module")
def dropped(data):
    return _run(data, "dropped", _spec(True), drops="hospital-2:after-shares")


@pytest.fixture(scope="module")
def plain_two(data):
    return _run(data, "plain-two", _spec(False), sites=["hospital-1", "hospital-3"])


def test_site_dropped_after_shares_is_recovered_and_matches_fedavg_over_the_rest(dropped, plain_two):
    (d_result, d_model), (p_result, p_model) = dropped, plain_two
    rnd = d_result.metrics["rounds"][0]
    assert d_result.metrics["status"] == "completed", d_result.metrics
    assert rnd["dropped"] == ["hospital-2"] and sorted(rnd["sites"]) == ["hospital-1", "hospital-3"]
    assert _max_diff(d_model, p_model) <= _tolerance(d_result.metrics, d_model)
    unmask = [r for r in _receipts(d_result) if r["task"] == "ai4hi_secagg_unmask"]
    assert sorted(r["site"] for r in unmask) == ["hospital-1", "hospital-3"]


def test_too_many_dropped_abandons_the_round_and_reveals_nothing(data):
    result, model = _run(data, "abandoned", _spec(True), drops="hospital-2:after-shares,hospital-3:after-shares")
    assert result.metrics["status"] in ("failed", "stopped")
    assert result.metrics["rounds"][0]["status"] == "abandoned"
    assert "nothing individual was revealed" in result.metrics["reason"]
    assert not [r for r in _receipts(result) if r["task"] == "ai4hi_secagg_unmask"]  # no share ever requested
    initial = ClassificationTrainer(_spec(True), site_dir=None, site_name="t", device="cpu").initial_state()
    assert _max_diff(model, initial) == 0  # the last good model: the initial one


def test_dp_sgd_client_dp_and_secure_aggregation_together(data, tmp_path):
    privacy = {"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0},
               "client_dp": {"clip": 0.05, "noise_multiplier": 0.5}}
    policy = tmp_path / "policy.yaml"
    policy.write_text("max_epsilon_per_dataset: 50\nrequire_dp: true\nrequire_secure_aggregation: true\n")
    result, _ = _run(data, "dp-secure", _spec(True, rounds=2, privacy=privacy), policy=policy)
    assert result.metrics["status"] == "completed", result.metrics
    assert [r["status"] for r in result.metrics["rounds"]] == ["completed", "completed"]
    assert result.metrics["rounds"][1]["consortium_metrics"]["dp_epsilon"] > 0
    for site in SITES:
        ledger = PrivacyLedger(data / "dp-secure" / "sites" / site / "ai4hi" / "privacy_ledger.jsonl")
        assert ledger.verify().ok
        spent = [r for r in ledger.records() if r["status"] == "spent"]
        assert len(spent) == 2
        egress = [e["record"] for e in read_entries(result.result_dir / "egress" / f"{site}.jsonl")
                  if e["record"]["task"] == "train"]
        # the ledger describes exactly the masked vector that left, nothing in float
        assert [r["egress"]["sha256"] for r in spent] == [r["sha256"] for r in egress]
        for record in egress:  # the masked vector (uint32) and the next round's signed keys (uint8)
            assert {(t["name"], t["dtype"]) for t in record["tensors"]} <= {("secagg_masked", "uint32"),
                                                                             ("secagg_advertise", "uint8")}
    assert json.loads((result.result_dir / "metrics.json").read_text())["privacy"]["hospital-1"]["chain_ok"]


def test_a_site_policy_can_require_secure_aggregation(data, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("max_epsilon_per_dataset: 10\nrequire_dp: false\nrequire_secure_aggregation: true\n")
    result, _ = _run(data, "required", _spec(False), policy=policy, sites=["hospital-1", "hospital-2"])
    assert result.metrics["status"] != "completed"
    assert any("requires secure aggregation" in r["reason"] for r in result.metrics["refused"])

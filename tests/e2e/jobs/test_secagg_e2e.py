"""End-to-end (real simulator) secure aggregation: the global model equals plain FedAvg within the
stated quantisation bound, a site dropped after the share phase is recovered (threshold 2 of 3 under
the sites' majority rule), too many drops abandon the round without any unmasking, only
uint32/uint8 protocol payloads ever reach the server, DP-SGD + client-level DP + secure aggregation
run together, and the active-adversary acceptance tests that need the whole stack: a server claiming
10,000 sites changes no site's noise, one site's out-of-range input abandons the round and keeps the
last good model, a job threshold below the sites' floor is refused with the reason in metrics.json."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ai4hi_sdk.audit.hash_chain import read_entries
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.jobs.builder import code_sha256
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.privacy.dp.ledger import PrivacyLedger
from ai4hi_sdk.trainers.classification import ClassificationTrainer
from ai4hi_sdk.trainers.loading import trainer_class_for

pytestmark = pytest.mark.e2e
SITES = ["hospital-1", "hospital-2", "hospital-3"]
FIXTURES = Path(__file__).resolve().parents[2] / "jobs" / "fixtures"
NO_DP_POLICY = "tests/jobs/fixtures/policy_without_dp.yaml"
MAX_SAMPLES = 40
SECURE_TRAIN = [("secagg_masked", "uint32"), ("secagg_masked_header", "uint8")]


def _policy(path: Path, **changes) -> Path:
    """The test sites' policy (no DP-SGD required) with ``changes``."""
    policy = yaml.safe_load(Path(NO_DP_POLICY).read_text())
    path.write_text(yaml.safe_dump({**policy, **changes}))
    return path


def _spec(secure: bool, rounds: int = 1, privacy: dict | None = None, **secure_options) -> JobSpec:
    privacy = dict(privacy or {})
    if secure:
        privacy["secure_aggregation"] = {"clip": 1.0, "max_samples_per_site": MAX_SAMPLES, **secure_options}
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
    assert tasks == {"ai4hi_secagg_keys", "ai4hi_secagg_shares", "train", "ai4hi_secagg_consistency",
                     "ai4hi_secagg_unmask", "validate"}
    for record in receipts:
        if record["task"] == "validate":
            continue  # final validation metrics of the global model, per site by design
        assert record["metric_names"] == [], record  # secure metrics: nothing per site in the clear
        assert {t["dtype"] for t in record["tensors"]} <= {"uint8", "uint32"}, record
        if record["task"] == "train":  # one round: no next-round keys ride along
            assert sorted((t["name"], t["dtype"]) for t in record["tensors"]) == SECURE_TRAIN
        if record["task"] == "ai4hi_secagg_consistency":  # one signature over the survivor set
            assert [(t["name"], t["dtype"]) for t in record["tensors"]] == [("secagg_consistency", "uint8")]
    # every site signed the survivor set and was asked to unmask, once
    for task in ("ai4hi_secagg_consistency", "ai4hi_secagg_unmask"):
        assert sorted(r["site"] for r in receipts if r["task"] == task) == SITES
    # what the sites logged as leaving equals what the server logged as arriving, hash for hash
    sent = {(r["site"], r["task"], r["sha256"]) for site in SITES
            for r in (e["record"] for e in read_entries(result.result_dir / "egress" / f"{site}.jsonl"))}
    assert {(r["site"], r["task"], r["sha256"]) for r in receipts} == sent
    consortium = result.metrics["rounds"][0]["consortium_metrics"]
    assert 0 < consortium["train_loss"] < 10 and "train_samples" in consortium


@pytest.fixture(scope="module")
def dropped(data):
    """One dropout of three needs t = 2: the job asks for it and every site's policy allows it
    (the default floor(2n/3) + 1 = 3 would need all three)."""
    policy = _policy(data / "majority.yaml", secure_aggregation_threshold_rule="majority")
    return _run(data, "dropped", _spec(True, threshold=2), drops="hospital-2:after-shares", policy=policy)


@pytest.fixture(scope="module")
def plain_two(data):
    return _run(data, "plain-two", _spec(False), sites=["hospital-1", "hospital-3"])


def test_site_dropped_after_shares_is_recovered_and_matches_fedavg_over_the_rest(dropped, plain_two):
    (d_result, d_model), (_, p_model) = dropped, plain_two
    rnd = d_result.metrics["rounds"][0]
    assert d_result.metrics["status"] == "completed", d_result.metrics
    assert rnd["dropped"] == ["hospital-2"] and sorted(rnd["sites"]) == ["hospital-1", "hospital-3"]
    assert rnd["threshold"] == 2
    assert _max_diff(d_model, p_model) <= _tolerance(d_result.metrics, d_model)
    for task in ("ai4hi_secagg_consistency", "ai4hi_secagg_unmask"):
        assert sorted(r["site"] for r in _receipts(d_result) if r["task"] == task) == ["hospital-1", "hospital-3"]


def test_too_many_dropped_abandons_the_round_and_reveals_nothing(data):
    result, model = _run(data, "abandoned", _spec(True), drops="hospital-2:after-shares,hospital-3:after-shares")
    assert result.metrics["status"] in ("failed", "stopped")
    assert result.metrics["rounds"][0]["status"] == "abandoned"
    assert "nothing individual was revealed" in result.metrics["reason"]
    # no survivor set was proposed and no share ever requested
    assert not [r for r in _receipts(result) if r["task"] in ("ai4hi_secagg_consistency", "ai4hi_secagg_unmask")]
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
    # epsilon is accounting: it travels in the clear per site (wire.ACCOUNTING_METRICS), never in the masked sum
    last = result.metrics["rounds"][1]
    assert sorted(last["sites"]) == SITES and all(m["dp_epsilon"] > 0 for m in last["sites"].values())
    assert "dp_epsilon" not in last["consortium_metrics"] and last["consortium_metrics"]["dp_noise_multiplier"] == 1.0
    for site in SITES:
        ledger = PrivacyLedger(data / "dp-secure" / "sites" / site / "ai4hi" / "privacy_ledger.jsonl")
        assert ledger.verify().ok
        spent = [r for r in ledger.records() if r["status"] == "spent"]
        assert len(spent) == 2
        egress = [e["record"] for e in read_entries(result.result_dir / "egress" / f"{site}.jsonl")
                  if e["record"]["task"] == "train"]
        # the ledger describes exactly the masked vector that left, nothing in float
        assert [r["egress"]["sha256"] for r in spent] == [r["sha256"] for r in egress]
        for record in egress:  # the masked vector (uint32), its header and the next round's signed keys (uint8)
            assert {(t["name"], t["dtype"]) for t in record["tensors"]} <= {*SECURE_TRAIN, ("secagg_advertise", "uint8")}
        # client-level noise sized from the 3 participants the site verified (recorded with the DP-SGD round)
        assert [r["client_dp"]["participant_names"] for r in spent] == [SITES, SITES]
    assert json.loads((result.result_dir / "metrics.json").read_text())["privacy"]["hospital-1"]["chain_ok"]


def test_a_site_policy_can_require_secure_aggregation(data, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("max_epsilon_per_dataset: 10\nrequire_dp: false\nrequire_secure_aggregation: true\n")
    result, _ = _run(data, "required", _spec(False), policy=policy, sites=["hospital-1", "hospital-2"])
    assert result.metrics["status"] != "completed"
    assert any("requires secure aggregation" in r["reason"] for r in result.metrics["refused"])


# --------------------------------------------------------------------------- the active adversary
def _job_code_policy(tmp_path: Path, spec: JobSpec, **changes) -> Path:
    """The test policy allowing ``spec``'s code by its hash (sites refuse other code)."""
    return _policy(tmp_path / "policy.yaml", allowed_code_sha256=[code_sha256(spec)], **changes)


def _in_memory_sites(root: Path) -> Path:
    for site in SITES:  # the job's trainer brings its data; the folders only name the sites
        (root / "data" / site).mkdir(parents=True, exist_ok=True)
        (root / "data" / site / "labels.csv").write_text("StudyInstanceUID,label\n")
    return root / "data"


def test_an_inflated_site_count_from_the_server_does_not_change_any_sites_noise(tmp_path):
    """The server (job code it imports, playing the active server) claims 10,000 sites in every
    task. Each site sizes its client-level noise from the 3 participants it verified: the noise in
    the aggregate is what 3 sites give (an independent prediction from the spec), not 1/58 of it."""
    sigma, clip = 1.0, 1.0
    spec = JobSpec(name="inflated", trainer="inflating_server:EqualSitesTrainer", code=["inflating_server.py"],
                   base_dir=str(FIXTURES), min_sites=2,
                   model={"init_features": 16, "growth_rate": 8, "block_config": [2, 2], "bn_size": 2},
                   train={"rounds": 1, "batch_size": 8, "lr": 1e-6, "threads": 1, "seed": 3},
                   privacy={"client_dp": {"clip": clip, "noise_multiplier": sigma},
                            "secure_aggregation": {"clip": 8.0, "max_samples_per_site": 16}})
    policy = _job_code_policy(tmp_path, spec, max_epsilon_per_dataset=50.0, min_noise_multiplier=0.9)
    result = simulate(spec, _in_memory_sites(tmp_path), tmp_path / "ws", timeout_s=300, site_policy=policy)
    assert result.metrics["status"] == "completed", result.metrics
    log = (tmp_path / "ws" / "simulate.log").read_text()
    for site in SITES:  # the lie reached every site, which kept its consortium's 3 sites
        assert f"{site}: secure aggregation: the server names 9997 job site(s) outside this site's consortium" in log
        ledger = PrivacyLedger(tmp_path / "ws" / "sites" / site / "ai4hi" / "privacy_ledger.jsonl")
        (record,) = [r for r in ledger.records() if r["status"] == "spent"]
        assert record["mechanism"] == "client_dp" and record["noise_multiplier"] == sigma
        assert record["client_dp"]["participant_names"] == SITES and record["client_dp"]["participants"] == 3
    # the aggregate's noise: each of 3 equal-weight sites adds N(0, (sigma clip)^2 / 3) per element, the
    # mean of 3 has std sigma clip / 3; the training itself moves the model by < 1e-3 (lr 1e-6, and the
    # whole delta is clipped to L2 norm 1 before the noise)
    model = torch.load(result.result_dir / "global_model.pt")
    try:
        initial = trainer_class_for(spec)(spec, site_dir=None, site_name="t", device="cpu").initial_state()
    finally:  # the fixture patched the server driver in this process too: put it back
        from ai4hi_sdk.jobs.components.secagg_server import SecureRounds

        SecureRounds._ask = sys.modules["inflating_server"]._ask
    change = torch.cat([(model[k] - initial[k]).flatten().double() for k in initial])
    assert change.numel() > 5_000
    expected = sigma * clip / 3
    assert abs(float(change.std()) / expected - 1) < 0.06, (float(change.std()), expected)
    # a site that believed the server would add 58x less noise: the aggregate's std would drop by >= 18%
    assert math.sqrt((2 + 3 / 10_000) / 3) * expected < 0.83 * expected


def test_one_sites_out_of_range_input_abandons_the_round_and_keeps_the_last_good_model(tmp_path):
    """hospital-2 (job code it allowed) sends out-of-range levels in round 1. The masked vector
    shows nothing; the unmasked sum is impossible for in-range inputs, so the server abandons the
    round and keeps round 0's model, which equals plain FedAvg of round 0 within the bound."""
    spec = JobSpec(name="out-of-range", trainer="out_of_range_trainer:OutOfRangeTrainer",
                   code=["out_of_range_trainer.py"], base_dir=str(FIXTURES), min_sites=2,
                   model={"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
                   train={"rounds": 3, "batch_size": 8, "threads": 1, "seed": 5},
                   privacy={"secure_aggregation": {"clip": 1.0, "max_samples_per_site": 40}})
    result = simulate(spec, _in_memory_sites(tmp_path), tmp_path / "ws", timeout_s=300,
                      site_policy=_job_code_policy(tmp_path, spec))
    metrics = result.metrics
    assert metrics["status"] == "failed", metrics
    assert [r["status"] for r in metrics["rounds"]] == ["completed", "abandoned"]
    reason = metrics["rounds"][1]["reason"]
    assert "unmasked sum rejected (out of the public bounds" in reason and "outside the clip range +-1" in reason
    assert "last good model is kept" in metrics["reason"] and not metrics["refused"]
    # the kept model is round 0's FedAvg, computed here in plain torch from the same trainers
    Trainer = trainer_class_for(spec)
    try:
        start = Trainer(spec, device="cpu").initial_state()
        updates = [Trainer(spec, site_dir=".", site_name=s, device="cpu").fit(start, 0) for s in SITES]
    finally:  # the fixture patched the SDK's encoder in this process too: put it back
        from ai4hi_sdk.privacy.secagg.protocol.payload import PayloadCodec

        PayloadCodec.encode = sys.modules["out_of_range_trainer"]._encode
    total = sum(u.num_samples for u in updates)
    assert metrics["rounds"][0]["total_weight"] == total == 16 + 32 + 32
    kept = torch.load(result.result_dir / "global_model.pt")
    tol = _tolerance(metrics, kept)
    for name, value in start.items():
        expected = value.double() + sum(u.num_samples * u.delta[name].double() for u in updates) / total
        assert float((kept[name].double() - expected).abs().max()) <= tol, name
    assert _max_diff(kept, start) > 100 * tol  # round 0 did move the model


def test_a_job_threshold_below_the_sites_floor_is_refused_with_the_reason(data, tmp_path):
    """threshold 2 of 3 sites: every site's default floor is floor(2*3/3) + 1 = 3; no site shares a
    key, the job stops and metrics.json says why, site by site."""
    result, model = _run(data, "below-floor", _spec(True, threshold=2))
    metrics = result.metrics
    assert metrics["status"] == "stopped", metrics
    assert sorted(r["site"] for r in metrics["refused"]) == SITES
    for refusal in metrics["refused"]:
        assert refusal["round"] == 0
        assert "threshold t=2 is below this site's floor 3 for a neighbourhood of 3" in refusal["reason"]
        assert "ask for threshold >= 3 in the job spec" in refusal["reason"]
    assert not [r for r in _receipts(result) if r["task"] == "train"]  # nothing was trained or sent
    initial = ClassificationTrainer(_spec(True), site_dir=None, site_name="t", device="cpu").initial_state()
    assert _max_diff(model, initial) == 0

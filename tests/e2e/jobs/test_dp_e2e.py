"""End-to-end (real simulator) DP-SGD: per-site epsilon equals an independent recomputation from
the ledger's (q, sigma, steps), and a site with a tiny budget refuses the round that would exceed
it — the job goes on with the other site, and the ledger never shows an overspend."""

from __future__ import annotations

import math

import pytest
import yaml
from opacus.accountants import RDPAccountant as OpacusRDP

from ai4hi_sdk.audit.hash_chain import read_entries
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.privacy.dp.accountants import RDPAccountant
from ai4hi_sdk.privacy.dp.ledger import PrivacyLedger
from ai4hi_sdk.config.site_policy import SITE_POLICY
from ai4hi_sdk.trainers.classification import ClassificationTrainer

pytestmark = pytest.mark.e2e
SIGMA, ROUNDS, DELTA, CLIP = 1.0, 3, 1e-5, 0.05


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    for index in range(2):
        synth_site(root / "data" / f"hospital-{index + 1}", site_index=index, n_studies=32, seed=11)
    spec = JobSpec(
        name="dp-e2e", min_sites=1,
        model={"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
        train={"rounds": ROUNDS, "local_epochs": 1, "batch_size": 8, "lr": 0.01, "optimizer": "adam", "threads": 1},
        data={"image_size": 32},
        privacy={"dp_sgd": {"noise_multiplier": SIGMA, "max_grad_norm": 1.0},
                 # wiring check of client-level DP: clipping only (its noise is tested in unit tests)
                 "client_dp": {"clip": CLIP, "noise_multiplier": 0.0}},
    )
    # hospital-2's admin allows more than one round of this job but less than two
    trainer = ClassificationTrainer(spec, site_dir=root / "data" / "hospital-2", site_name="hospital-2", device="cpu")
    batches = math.ceil(len(trainer.datasets.train) / spec.train.batch_size)
    one, two = (RDPAccountant([(SIGMA, 1 / batches, k * batches)]).get_epsilon(DELTA) for k in (1, 2))
    tiny = {"max_epsilon_per_dataset": round((one + two) / 2, 4), "delta": DELTA,
            "require_secure_aggregation": False}
    policy = root / "ws" / "sites" / "hospital-2" / SITE_POLICY
    policy.parent.mkdir(parents=True)
    policy.write_text(yaml.safe_dump(tiny))
    result = simulate(spec, root / "data", root / "ws", timeout_s=300)
    return {"root": root, "result": result, "limit": tiny["max_epsilon_per_dataset"], "spec": spec}


def test_job_continues_without_the_refusing_site(run):
    metrics = run["result"].metrics
    assert metrics["status"] == "completed", metrics
    assert [r["status"] for r in metrics["rounds"]] == ["completed"] * ROUNDS
    assert metrics["refused"] and {r["site"] for r in metrics["refused"]} == {"hospital-2"}
    refusal = metrics["refused"][0]
    assert refusal["round"] == 1 and "privacy budget" in refusal["reason"]
    assert set(metrics["rounds"][0]["sites"]) == {"hospital-1", "hospital-2"}
    assert set(metrics["rounds"][2]["sites"]) == {"hospital-1"}


def test_reported_epsilon_equals_independent_recomputation(run):
    root, metrics = run["root"], run["result"].metrics
    for site in ("hospital-1", "hospital-2"):
        ledger = PrivacyLedger(root / "ws" / "sites" / site / "ai4hi" / "privacy_ledger.jsonl")
        assert ledger.verify().ok
        spent = [r for r in ledger.records() if r["status"] == "spent"]
        reference = OpacusRDP()
        for record in spent:
            assert record["noise_multiplier"] == SIGMA
            reference.history.append((record["noise_multiplier"], record["sample_rate"], record["steps"]))
        last_round = max(r["round"] for r in metrics["rounds"] if site in r["sites"])
        reported = metrics["rounds"][last_round]["sites"][site]["dp_epsilon"]
        assert reported == pytest.approx(reference.get_epsilon(DELTA), rel=1e-3)
        assert metrics["privacy"][site]["chain_ok"]


def test_ledger_never_overspends_and_records_the_refusal(run):
    root, limit = run["root"], run["limit"]
    records = PrivacyLedger(root / "ws" / "sites" / "hospital-2" / "ai4hi" / "privacy_ledger.jsonl").records()
    assert [r["status"] for r in records] == ["spent", "refused"]
    assert all(r["epsilon_after"] <= limit for r in records if r["status"] == "spent")
    assert records[1]["epsilon_after"] == records[1]["epsilon_before"]  # nothing spent when refused


def test_ledger_egress_matches_what_left(run):
    root = run["root"]
    site = root / "ws" / "sites" / "hospital-1" / "ai4hi"
    spent = [r for r in PrivacyLedger(site / "privacy_ledger.jsonl").records() if r["status"] == "spent"]
    sent = [e["record"] for e in read_entries(site / "egress_log.jsonl") if e["record"]["task"] == "train"]
    assert [r["egress"]["sha256"] for r in spent] == [r["sha256"] for r in sent]
    # the refusing site sent only a refusal: no tensors, no metrics
    h2 = [e["record"] for e in read_entries(root / "ws" / "sites" / "hospital-2" / "ai4hi" / "egress_log.jsonl")]
    refusals = [r for r in h2 if r["task"] == "train" and r["round"] >= 1]
    assert refusals and all(r["tensors"] == [] and r["metric_names"] == [] for r in refusals)
    assert all("ai4hi_refused" in r["meta_keys"] for r in refusals)


def test_client_level_clipping_bounds_every_round(run):
    import torch

    final = torch.load(run["result"].result_dir / "global_model.pt")
    initial = ClassificationTrainer(run["spec"], device="cpu").initial_state()
    moved = torch.sqrt(sum(((final[k] - initial[k]).double() ** 2).sum() for k in initial))
    # each round adds a weighted mean of deltas clipped to CLIP: the model moves at most CLIP per round
    assert 0 < moved <= ROUNDS * CLIP + 1e-6

"""End-to-end (real simulator): a malformed update is rejected with a logged reason, the round
that loses it is abandoned, and the last good global model is what the job leaves behind."""

from __future__ import annotations

from pathlib import Path

import pytest

import torch
import yaml

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.jobs.builder import code_sha256
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.trainers.loading import trainer_class_for

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).resolve().parents[2] / "jobs" / "fixtures"


def test_poisoned_round_is_rejected_and_last_good_model_kept(tmp_path):
    for site in ("hospital-1", "hospital-2"):
        (tmp_path / "data" / site).mkdir(parents=True)
        (tmp_path / "data" / site / "labels.csv").write_text("StudyInstanceUID,label\n")
    spec = JobSpec(
        name="poison", trainer="poison_trainer:PoisonTrainer", code=["poison_trainer.py"],
        base_dir=str(FIXTURES), min_sites=2,
        model={"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
        train={"rounds": 3, "batch_size": 8, "threads": 1, "seed": 5},
    )
    # the sites allow this job's code by its hash (without that they refuse it: tests/site)
    policy = yaml.safe_load((FIXTURES / "policy_without_dp.yaml").read_text())
    policy["allowed_code_sha256"] = [code_sha256(spec)]
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    result = simulate(spec, tmp_path / "data", tmp_path / "ws", timeout_s=240, site_policy=tmp_path / "policy.yaml")
    metrics = result.metrics
    assert metrics["status"] == "failed", metrics
    assert "last good model is kept" in metrics["reason"]
    assert [r["status"] for r in metrics["rounds"]] == ["completed", "abandoned"]
    assert metrics["rejected"] == [
        {"round": 1, "site": "hospital-2", "reason": metrics["rejected"][0]["reason"]}]
    assert "NaN" in metrics["rejected"][0]["reason"]
    log = (tmp_path / "ws" / "simulate.log").read_text()
    assert "rejected update from hospital-2 in round 1" in log

    # the kept model is exactly round 0's FedAvg result, computed here in plain torch
    PoisonTrainer = trainer_class_for(spec)  # the same class the sites ran
    try:
        trainers = {s: PoisonTrainer(spec, site_dir=".", site_name=s, device="cpu") for s in ("hospital-1", "hospital-2")}
        start = PoisonTrainer(spec, device="cpu").initial_state()
        updates = [t.fit(start, 0) for t in trainers.values()]
    finally:  # the fixture patched the SDK's delta in this process too: put it back
        import sys

        import ai4hi_sdk.trainers.local_round as local_round

        local_round.state_delta = sys.modules["poison_trainer"]._state_delta
    total = sum(u.num_samples for u in updates)
    expected = {k: v + sum(u.num_samples * u.delta[k] for u in updates) / total for k, v in start.items()}
    kept = torch.load(result.result_dir / "global_model.pt")
    for name, value in expected.items():
        assert torch.allclose(kept[name], value, rtol=1e-5, atol=1e-6), name
        assert torch.isfinite(kept[name]).all()

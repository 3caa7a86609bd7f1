"""SiteTrainer with the site's privacy gate: policy, budget refusal before training, spend and
ledger, client-level DP. No NVFlare: the trainer is called directly with a site workspace."""

import pytest
import torch
import yaml

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.privacy.dp.ledger import PrivacyLedger
from ai4hi_sdk.privacy.dp.policy import SITE_POLICY
from ai4hi_sdk.privacy.dp.site_guard import RoundRefused
from ai4hi_sdk.privacy.egress import describe_payload
from tests.trainers.conftest import InMemoryTrainer


def _spec(base: JobSpec, **privacy) -> JobSpec:
    data = base.model_dump()
    data["privacy"] = privacy
    return JobSpec.model_validate(data)


def _workspace(tmp_path, **policy):
    path = tmp_path / SITE_POLICY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"max_epsilon_per_dataset": 10.0, "require_secure_aggregation": False, **policy}))
    return tmp_path


def test_site_without_policy_refuses_to_train(spec, tmp_path):
    trainer = InMemoryTrainer(spec, site_dir=".", site_name="a", device="cpu", site_workspace=tmp_path)
    with pytest.raises(RoundRefused, match="no site privacy policy"):
        trainer.fit(trainer.initial_state(), 0)


def test_policy_requiring_dp_refuses_a_non_private_job(spec, tmp_path):
    trainer = InMemoryTrainer(spec, site_dir=".", site_name="a", device="cpu", site_workspace=_workspace(tmp_path))
    with pytest.raises(RoundRefused, match="requires differential privacy"):
        trainer.fit(trainer.initial_state(), 0)


def test_dp_round_spends_budget_and_records_payload(spec, tmp_path):
    dp_spec = _spec(spec, dp_sgd={"noise_multiplier": 1.0, "max_grad_norm": 1.0})
    ws = _workspace(tmp_path)
    trainer = InMemoryTrainer(dp_spec, site_dir=".", site_name="a", device="cpu", site_workspace=ws, job_id="j1")
    update = trainer.fit(trainer.initial_state(), 0)
    assert update.metrics["dp_noise_multiplier"] == 1.0 and update.metrics["dp_epsilon"] > 0
    assert set(update.metrics) <= InMemoryTrainer.declared_metrics()
    records = PrivacyLedger(ws / "ai4hi" / "privacy_ledger.jsonl").records()
    assert [r["status"] for r in records] == ["spent"] and records[0]["job_id"] == "j1"
    assert records[0]["egress"]["sha256"] == describe_payload(update.delta, update.metrics)["sha256"]
    assert not any(k.startswith("_module.") for k in update.delta)


def test_budget_refuses_before_training(spec, tmp_path):
    dp_spec = _spec(spec, dp_sgd={"noise_multiplier": 1.0, "max_grad_norm": 1.0})
    ws = _workspace(tmp_path, max_epsilon_per_dataset=0.01)
    trainer = InMemoryTrainer(dp_spec, site_dir=".", site_name="a", device="cpu", site_workspace=ws)
    start = trainer.initial_state()
    with pytest.raises(RoundRefused, match="privacy budget"):
        trainer.fit(start, 0)
    # refused before any training step: the model is still the received one
    after = {k: v for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    assert all(torch.equal(after[k], start[k]) for k in start)
    records = PrivacyLedger(ws / "ai4hi" / "privacy_ledger.jsonl").records()
    assert [r["status"] for r in records] == ["refused"] and records[0]["epsilon_after"] == 0


def test_noise_below_site_minimum_is_refused(spec, tmp_path):
    dp_spec = _spec(spec, dp_sgd={"noise_multiplier": 0.3, "max_grad_norm": 1.0})
    trainer = InMemoryTrainer(dp_spec, site_dir=".", site_name="a", device="cpu",
                              site_workspace=_workspace(tmp_path, min_noise_multiplier=0.5))
    with pytest.raises(RoundRefused, match="noise"):
        trainer.fit(trainer.initial_state(), 0)


def test_target_epsilon_is_met_over_the_job(spec, tmp_path):
    dp_spec = _spec(spec, dp_sgd={"target_epsilon": 3.0, "max_grad_norm": 1.0})
    trainer = InMemoryTrainer(dp_spec, site_dir=".", site_name="a", device="cpu")
    state = trainer.initial_state()
    for round_index in range(dp_spec.train.rounds):
        update = trainer.fit(state, round_index)
    assert 3.0 - 0.05 <= update.metrics["dp_epsilon"] <= 3.0


def test_client_level_dp_clips_the_delta(spec):
    clipped = _spec(spec, client_dp={"clip": 1e-3, "noise_multiplier": 0.0})
    trainer = InMemoryTrainer(clipped, site_dir=".", site_name="a", device="cpu")
    update = trainer.fit(trainer.initial_state(), 0, n_sites=3)
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in update.delta.values()))
    assert norm <= 1e-3 + 1e-9

"""SiteTrainer.fit for local experiments: DP-SGD accounted in memory, no site policy (the site's
gate, budget and ledger belong to the site runtime: tests/site)."""

from ai4hi_sdk.config.job_spec import JobSpec
from tests.trainers.conftest import InMemoryTrainer


def _spec(base: JobSpec, **privacy) -> JobSpec:
    data = base.model_dump()
    data["privacy"] = privacy
    return JobSpec.model_validate(data)


def test_target_epsilon_is_met_over_the_job(spec):
    dp_spec = _spec(spec, dp_sgd={"target_epsilon": 3.0, "max_grad_norm": 1.0})
    trainer = InMemoryTrainer(dp_spec, site_dir=".", site_name="a", device="cpu")
    state = trainer.initial_state()
    for round_index in range(dp_spec.train.rounds):
        update = trainer.fit(state, round_index)
    assert 3.0 - 0.05 <= update.metrics["dp_epsilon"] <= 3.0
    assert not any(k.startswith("_module.") for k in update.delta)


def test_a_trainer_holds_no_privacy_gate(spec):
    """The gate, budget and ledger live in the site runtime; a trainer has none to switch off."""
    trainer = InMemoryTrainer(spec, site_dir=".", site_name="a", device="cpu")
    assert not hasattr(trainer, "guard") and not hasattr(trainer, "run_federated")

import pytest
import torch

from ai4hi_sdk.trainers.site_trainer import SiteTrainer
from ai4hi_sdk.trainers.state import exchanged_state, load_exchanged_state
from tests.trainers.conftest import InMemoryTrainer


def test_fit_returns_local_minus_global(spec):
    trainer = InMemoryTrainer(spec, site_dir=".", site_name="site-a", device="cpu")
    global_state = trainer.initial_state()
    update = trainer.fit(global_state, round_index=0)
    local = exchanged_state(trainer.model)
    assert set(update.delta) == set(global_state)
    for name in global_state:
        assert torch.allclose(update.delta[name], local[name] - global_state[name])
    assert any(update.delta[n].abs().sum() > 0 for n in update.delta), "training changed nothing"
    assert update.num_samples == 16
    assert set(update.metrics) <= InMemoryTrainer.declared_metrics()
    assert {"train_loss", "val_auroc", "global_val_auroc", "val_samples"} <= set(update.metrics)


def test_integer_buffers_stay_local(spec):
    trainer = InMemoryTrainer(spec, site_dir=".", site_name="site-a", device="cpu")
    state = trainer.initial_state()
    assert not any(name.endswith("num_batches_tracked") for name in state)
    assert all(t.dtype == torch.float32 for t in state.values())


def test_same_seed_same_update_across_instances(spec):
    a = InMemoryTrainer(spec, site_dir=".", site_name="site-a", device="cpu")
    b = InMemoryTrainer(spec, site_dir=".", site_name="site-a", device="cpu")
    start = a.initial_state()
    assert all(torch.equal(start[k], b.initial_state()[k]) for k in start)
    ua, ub = a.fit(start, 1), b.fit(start, 1)
    assert all(torch.equal(ua.delta[k], ub.delta[k]) for k in start)


def test_rounds_and_sites_get_different_seeds(spec):
    a = InMemoryTrainer(spec, site_dir=".", site_name="site-a", device="cpu")
    start = a.initial_state()
    r0, r1 = a.fit(start, 0), a.fit(start, 1)
    assert any(not torch.equal(r0.delta[k], r1.delta[k]) for k in start)


def test_validate_reports_received_model(spec):
    trainer = InMemoryTrainer(spec, site_dir=".", site_name="site-a", device="cpu")
    metrics = trainer.validate(trainer.initial_state())
    assert set(metrics) == {"val_loss", "val_accuracy", "val_auroc", "val_samples"}
    assert metrics["val_samples"] == 8


def test_mismatched_model_is_refused(spec):
    trainer = InMemoryTrainer(spec, site_dir=".", site_name="site-a", device="cpu")
    state = trainer.initial_state()
    name = next(iter(state))
    with pytest.raises(ValueError, match="shape"):
        load_exchanged_state(trainer.model, {**state, name: torch.zeros(1)})
    state.pop(name)
    with pytest.raises(ValueError, match="missing"):
        load_exchanged_state(trainer.model, state)


def test_undeclared_metric_is_refused(spec):
    class Leaky(InMemoryTrainer):
        def evaluate(self, model, dataset):
            return {**super().evaluate(model, dataset), "patient_0042_score": 0.9}

    trainer = Leaky(spec, site_dir=".", site_name="site-a", device="cpu")
    with pytest.raises(ValueError, match="undeclared"):
        trainer.validate(trainer.initial_state())


def test_base_hooks_must_be_overridden(spec):
    with pytest.raises(NotImplementedError):
        SiteTrainer(spec, device="cpu").initial_state()


def test_max_steps_per_round_caps_training(spec):
    capped = spec.with_overrides(max_steps_per_round=1, local_epochs=3)
    update = InMemoryTrainer(capped, site_dir=".", site_name="s", device="cpu").fit(
        InMemoryTrainer(capped, device="cpu").initial_state(), 0)
    assert update.metrics["train_steps"] == 1

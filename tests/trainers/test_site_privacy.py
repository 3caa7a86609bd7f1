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


def test_dp_sgd_steps_on_empty_poisson_batches_add_noise_and_count(spec):
    """With q = 1/8 over 8 examples most rounds draw some empty batch; the step still happens (the
    accountant counts it and noise moves the model) instead of failing in a grad sampler."""
    import torch
    from torch.utils.data import TensorDataset

    from tests.trainers.conftest import Splits

    class Tiny(InMemoryTrainer):  # 3D conv + instance norm, as the segmentation UNet: fails on an empty batch
        def build_model(self):
            return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.InstanceNorm3d(2, affine=True),
                                       torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4 * 4, 2))

        def build_datasets(self):
            images, labels = torch.randn(16, 1, 4, 4, 4), torch.arange(16) % 2
            return Splits(TensorDataset(images[:8], labels[:8]), TensorDataset(images[8:], labels[8:]))

    dp_spec = _spec(spec.with_overrides(batch_size=1, local_epochs=3),
                    dp_sgd={"noise_multiplier": 1.0, "max_grad_norm": 1.0})
    trainer = Tiny(dp_spec, site_dir=".", site_name="a", device="cpu")
    state = trainer.initial_state()
    for round_index in range(3):
        update = trainer.fit(state, round_index)
        assert update.metrics["dp_steps"] == 24 and update.metrics["dp_sample_rate"] == 1 / 8
        assert all(torch.isfinite(d).all() for d in update.delta.values())

"""The foundation jobs on CUDA + AMP, as a site runs them (the site runtime picks CUDA when present).
Runs wherever CUDA is present; elsewhere it is reported as skipped with the reason."""

from __future__ import annotations

import pytest
import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_consortium
from ai4hi_sdk.foundation.trainers import BackboneClassificationTrainer, MAEPretrainTrainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: foundation CUDA+AMP path NOT run"),
]
TRAIN = {"rounds": 1, "local_epochs": 1, "batch_size": 8, "lr": 0.002, "optimizer": "adam", "augment": False}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_fm")
    synth_consortium(root, sites=1, studies_per_site=30, seed=2, labelled_fraction=0.5, finding="subtle")
    return root / "hospital-1"


FFA = JobSpec(name="f", trainer="ai4hi_sdk.foundation.trainers:BackboneClassificationTrainer",
              model={"adaptation": "ffa_lora"}, data={"image_size": 32}, train=TRAIN)


def test_ffa_lora_cuda_amp_round_matches_cpu_direction(site):
    gpu = BackboneClassificationTrainer(FFA, site_dir=site, site_name="hospital-1")  # CUDA by default, as at a site
    assert gpu.device.type == "cuda" and gpu.use_amp
    cpu = BackboneClassificationTrainer(FFA, site_dir=site, site_name="hospital-1", device="cpu")
    start = cpu.initial_state()
    g, c = gpu.fit(start, 0), cpu.fit(start, 0)
    assert set(g.delta) == set(start) == set(gpu.exchanged_names())  # adapters and head only
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 and torch.isfinite(t).all()
               for t in g.delta.values())
    flat_g = torch.cat([t.flatten() for t in g.delta.values()])
    flat_c = torch.cat([t.flatten() for t in c.delta.values()])
    assert torch.nn.functional.cosine_similarity(flat_g, flat_c, dim=0) > 0.9


def test_mae_pretraining_learns_on_cuda_with_amp(site):
    """Masks are drawn on the GPU (another generator than the CPU's), so the check is that the loss falls."""
    spec = JobSpec(name="p", task="pretrain", data={"image_size": 32}, train={**TRAIN, "local_epochs": 2})
    trainer = MAEPretrainTrainer(spec, site_dir=site, site_name="hospital-1")
    assert trainer.device.type == "cuda" and trainer.use_amp
    state = trainer.initial_state()
    first = None
    for round_index in range(3):
        update = trainer.fit(state, round_index)
        first = first if first is not None else update.metrics["global_val_loss"]
        assert all(torch.isfinite(t).all() for t in update.delta.values())
        state = {k: state[k] + update.delta[k] for k in state}
    assert update.metrics["val_loss"] < 0.9 * first

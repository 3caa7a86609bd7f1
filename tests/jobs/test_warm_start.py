"""Warm start checks that run without the simulator: a given initial model must match the job's
architecture and be a readable file; the real-simulator test is in
``tests/e2e/jobs/test_warm_start_e2e.py``."""

from __future__ import annotations


import pytest
import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.jobs.builder import export_job
from ai4hi_sdk.jobs.components.controller import INITIAL_MODEL_FILE, initial_state_mismatch
from ai4hi_sdk.jobs.builder import install_initial_model
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.privacy.egress import model_sha256
from ai4hi_sdk.trainers.classification import ClassificationTrainer

SPEC = JobSpec(
    name="warm",
    model={"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
    train={"rounds": 1, "local_epochs": 1, "batch_size": 8, "lr": 0.05, "threads": 1, "seed": 7},
    data={"image_size": 32},
)


def champion_state(spec: JobSpec = SPEC) -> dict[str, torch.Tensor]:
    """A model of the job's architecture that is not the seeded initial model."""
    generator = torch.Generator().manual_seed(11)
    return {k: v + 0.05 * torch.randn(v.shape, generator=generator)
            for k, v in ClassificationTrainer(spec, device="cpu").initial_state().items()}


def test_mismatch_reasons():
    reference = ClassificationTrainer(SPEC, device="cpu").initial_state()
    assert initial_state_mismatch(dict(reference), reference) is None
    # entries that are not exchanged (not floating point) are ignored
    assert initial_state_mismatch({**reference, "norm.num_batches_tracked": torch.tensor(3)}, reference) is None
    name = sorted(reference)[0]
    assert "not a state dict" in initial_state_mismatch([1, 2], reference)
    assert f"missing ['{name}']" in initial_state_mismatch({k: v for k, v in reference.items() if k != name},
                                                           reference)
    assert "unexpected ['extra']" in initial_state_mismatch({**reference, "extra": torch.zeros(1)}, reference)
    wrong = {**reference, name: torch.zeros(3, 3)}
    assert f"'{name}' has shape (3, 3)" in initial_state_mismatch(wrong, reference)
    bad = {**reference, name: torch.full_like(reference[name], float("nan"))}
    assert "non-finite" in initial_state_mismatch(bad, reference)


def test_install_checks_the_file_and_ships_it_as_app_data(tmp_path):
    job_dir = export_job(SPEC, tmp_path / "job")
    other = SPEC.model_copy(update={"model": {**SPEC.model, "init_features": 4}})
    wrong = tmp_path / "other_architecture.pt"
    torch.save(ClassificationTrainer(other, device="cpu").initial_state(), wrong)
    with pytest.raises(UserError, match="cannot start job 'warm': not the job's architecture|cannot start job 'warm': '"):
        install_initial_model(SPEC, job_dir, wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="is not a torch state dict file"):
        install_initial_model(SPEC, job_dir, garbage)
    with pytest.raises(UserError, match="not found"):
        install_initial_model(SPEC, job_dir, tmp_path / "missing.pt")
    assert not list(job_dir.rglob(INITIAL_MODEL_FILE)), "a refused model must not be shipped"

    champion = champion_state()
    good = tmp_path / "champion.pt"
    torch.save(champion, good)
    digest = install_initial_model(SPEC, job_dir, good)
    assert digest == model_sha256(champion)
    shipped = list(job_dir.rglob(INITIAL_MODEL_FILE))
    # data for the server's app, never NVFlare custom code (which would make the job custom code at sites)
    assert shipped and all(p.parent.name == "ai4hi_data" for p in shipped)
    assert not list(job_dir.rglob("custom"))
    assert model_sha256(torch.load(shipped[0], weights_only=True)) == digest


def test_simulate_refuses_a_wrong_model_before_starting(tmp_path):
    synth_site(tmp_path / "data" / "hospital-1", site_index=0, n_studies=12, seed=3)
    synth_site(tmp_path / "data" / "hospital-2", site_index=1, n_studies=12, seed=3)
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(2)}, wrong)
    with pytest.raises(UserError, match="wrong.pt' cannot start job"):
        simulate(SPEC, tmp_path / "data", tmp_path / "ws", initial_model=wrong)
    assert not (tmp_path / "ws" / "simulate.log").exists()

"""Warm start: ``simulate(..., initial_model=...)`` makes a given state dict the round-0 global model.

A real NVFlare simulation from a "champion" that is not the seeded model, compared with FedAvg
computed by hand from that champion (the checks without the simulator: ``tests/jobs/test_warm_start.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.privacy.egress import model_sha256
from ai4hi_sdk.trainers.classification import ClassificationTrainer

from tests.jobs.test_warm_start import SPEC, champion_state


def fedavg_from(spec: JobSpec, start: dict[str, torch.Tensor], data_root: Path, sites: list[str]):
    trainers = {s: ClassificationTrainer(spec, site_dir=data_root / s, site_name=s, device="cpu") for s in sites}
    state = {k: v.clone() for k, v in start.items()}
    for round_index in range(spec.train.rounds):
        updates = {s: trainers[s].fit(state, round_index) for s in sites}
        total = sum(u.num_samples for u in updates.values())
        state = {n: v + sum(u.num_samples * u.delta[n] for u in updates.values()) / total for n, v in state.items()}
    return state


@pytest.mark.e2e
def test_round0_global_model_is_the_champion(tmp_path):
    sites = ["hospital-1", "hospital-2"]
    synth_site(tmp_path / "data" / sites[0], site_index=0, n_studies=24, seed=3)
    synth_site(tmp_path / "data" / sites[1], site_index=1, n_studies=32, seed=3)
    champion = champion_state()
    path = tmp_path / "champion.pt"
    torch.save(champion, path)
    result = simulate(SPEC, tmp_path / "data", tmp_path / "ws", timeout_s=240, initial_model=path,
                      site_policy=Path(__file__).resolve().parents[2] / "jobs" / "fixtures" / "policy_without_dp.yaml")
    assert result.ok, (result.metrics, (tmp_path / "ws" / "simulate.log").read_text()[-3000:])
    # the server's own record of the round-0 global model
    assert result.metrics["initial_model"]["sha256"] == model_sha256(champion)
    assert "ai4hi_initial_model.pt" in result.metrics["initial_model"]["source"]
    assert result.metrics["initial_model_file_sha256"] == model_sha256(champion)
    # and the sites trained from it: the result is FedAvg started from the champion, not from the seed
    simulated = torch.load(result.result_dir / "global_model.pt", weights_only=True)
    reference = fedavg_from(SPEC, champion, tmp_path / "data", sites)
    for name in reference:
        assert torch.allclose(simulated[name], reference[name], rtol=1e-5, atol=1e-6), name
    seeded = fedavg_from(SPEC, ClassificationTrainer(SPEC, device="cpu").initial_state(), tmp_path / "data", sites)
    assert any(not torch.allclose(simulated[n], seeded[n], atol=1e-4) for n in seeded)

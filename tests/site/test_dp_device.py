"""DP-SGD noise is drawn on the model's device from a securely seeded generator; sampling uses a CPU
generator. On CPU this checks the wiring; on a GPU site the same round runs on CUDA (issue 12, 9)."""

from __future__ import annotations

import pytest
import torch

import ai4hi_sdk.privacy.dp.client_level as client_level
from ai4hi_sdk.trainers.state import exchanged_state

DP = {"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}


def _recording(monkeypatch):
    calls = []
    real = client_level.secure_generator

    def record(device="cpu"):
        generator = real(device)
        calls.append((torch.device(device).type, generator))
        return generator

    monkeypatch.setattr(client_level, "secure_generator", record)
    return calls


def test_noise_generator_follows_the_model_device(site, monkeypatch):
    site.policy()
    runtime = site.runtime(privacy=DP)
    calls = _recording(monkeypatch)
    runtime.train(exchanged_state(runtime.model), 0, 2)
    model_device = next(runtime.model.parameters()).device
    # one generator for Poisson sampling (CPU), one for the noise (the model's device)
    assert [device for device, _ in calls] == ["cpu", model_device.type]
    noise = runtime._dp_session._optimizer.generator
    assert noise is calls[1][1] and noise.device == model_device
    # seeded from os.urandom: two sessions never share a stream
    assert calls[0][1].initial_seed() != calls[1][1].initial_seed()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: DP-SGD on CUDA NOT run")
def test_dp_sgd_round_on_cuda(site, monkeypatch):
    site.policy()
    runtime = site.runtime(privacy=DP)
    runtime.device = "cuda"
    calls = _recording(monkeypatch)
    out = runtime.train(exchanged_state(runtime.model), 0, 2)
    assert next(runtime.model.parameters()).device.type == "cuda"
    assert [device for device, _ in calls] == ["cpu", "cuda"]
    assert out.metrics["dp_epsilon"] > 0 and all(torch.isfinite(torch.as_tensor(v)).all() for v in out.params.values())

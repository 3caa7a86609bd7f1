"""Model state exchanged with the server: floating-point tensors of a ``state_dict``.

Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) stay local: averaging counters is
meaningless and they carry no model knowledge worth sharing.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


def exchanged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU float32 copies of the model's floating-point state entries, by name."""
    return {
        name: tensor.detach().to("cpu", torch.float32).clone()
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point()
    }


def load_exchanged_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a received state into ``model``; every exchanged entry must be present with its shape."""
    own = model.state_dict()
    expected = {name for name, tensor in own.items() if tensor.is_floating_point()}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"received model does not match the local architecture: missing={sorted(missing)[:5]}, "
            f"unexpected={sorted(unexpected)[:5]}"
        )
    for name in expected:
        value = torch.as_tensor(state[name])
        if tuple(value.shape) != tuple(own[name].shape):
            raise ValueError(f"received '{name}' has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}")
        own[name].copy_(value.to(own[name].dtype))


def state_delta(local: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``local - base`` per entry (float32, CPU)."""
    return {name: (local[name].float() - base[name].float()) for name in base}

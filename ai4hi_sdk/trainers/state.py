"""Model state exchanged with the server: the tensors a trainer names, by default every
floating-point tensor of a ``state_dict``.

Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) stay local: averaging counters is
meaningless and they carry no model knowledge worth sharing. A trainer may exchange fewer tensors
(:meth:`~ai4hi_sdk.trainers.site_trainer.SiteTrainer.exchanged_names`): an adapted backbone sends
only its adapters and head, the frozen backbone stays at every site.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn


def floating_state_names(model: nn.Module) -> list[str]:
    """Names of the model's floating-point state entries, in state-dict order (the default exchange)."""
    return [name for name, tensor in model.state_dict().items() if tensor.is_floating_point()]


def check_exchanged_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    """``names`` as a list, checked: non-empty, no repeats, each a floating-point state entry of
    ``model``. Raises ``ValueError`` naming the first problems."""
    names = list(names)
    own = model.state_dict()
    if not names:
        raise ValueError("the trainer exchanges no tensors (exchanged_names() is empty)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    unknown = [n for n in names if n not in own]
    integer = [n for n in names if n in own and not own[n].is_floating_point()]
    if repeated or unknown or integer:
        raise ValueError(f"exchanged_names() must name distinct floating-point state entries of the model: "
                         f"repeated {repeated[:5]}, not in the model {unknown[:5]}, not floating point {integer[:5]}")
    return names


def exchanged_state(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached CPU float32 copies of the exchanged entries (``names``; default: every
    floating-point entry), by name."""
    state = model.state_dict()
    names = floating_state_names(model) if names is None else names
    return {name: state[name].detach().to("cpu", torch.float32).clone() for name in names}


def load_exchanged_state(model: nn.Module, state: Mapping[str, torch.Tensor],
                         names: Sequence[str] | None = None) -> None:
    """Load a received state into ``model``; every exchanged entry (``names``; default: every
    floating-point entry) must be present with its shape, and nothing else."""
    own = model.state_dict()
    expected = set(floating_state_names(model) if names is None else names)
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
    """``local - base`` per entry of ``base`` (float32, CPU)."""
    return {name: (local[name].float() - base[name].float()) for name in base}


#: marks adapter tensors in state-dict names (``...lora_A...``): they exist only because of the adaptation
LORA_MARKER = ".lora_"


def exchange_size(model: nn.Module, names: Sequence[str]) -> dict[str, float]:
    """What one round uploads, against the whole model: ``{"tensors", "elements", "bytes"
    (float32), "full_model_elements", "percent"}``. The whole model is every floating-point state
    entry except adapter tensors (``.lora_`` in the name: they exist only because of the adaptation)."""
    state = model.state_dict()
    elements = sum(state[name].numel() for name in names)
    full = sum(t.numel() for name, t in state.items() if t.is_floating_point() and LORA_MARKER not in f".{name}")
    return {"tensors": float(len(names)), "elements": float(elements), "bytes": float(4 * elements),
            "full_model_elements": float(full), "percent": 100.0 * elements / full if full else 0.0}

"""Client-level (distributed) differential privacy for a site's model delta.

Each site clips its whole update (all tensors together) to L2 norm ``clip`` and adds Gaussian
noise of standard deviation ``noise_multiplier * clip / sqrt(n_sites)`` to every coordinate,
*before* secure-aggregation masking. The server only ever sees the masked vectors and their
sum, and the sum of ``n_sites`` independent noises is ``N(0, (noise_multiplier * clip)^2)``
per coordinate: the Gaussian mechanism with noise multiplier ``noise_multiplier`` for a sum in
which one site's contribution has L2 sensitivity ``clip``. Over rounds, account it like DP-SGD
with ``sample_rate`` = fraction of sites sampled per round (1.0 when all train) and one step
per round, e.g. ``RDPAccountant().step(noise_multiplier, 1.0, rounds)`` -> client-level epsilon.

Assumptions (say them when you report the guarantee):

* **Honest noise.** The guarantee needs the noise of the sites whose updates are summed. If only
  ``h`` of the ``n_sites`` sites add their share (others drop out or collude with the server and
  subtract theirs), the sum carries ``noise_multiplier * sqrt(h / n_sites)``:
  :func:`effective_noise_multiplier` gives the multiplier to account with. Size ``n_sites`` as
  the number of sites expected to survive, or account with the minimum survivors secure
  aggregation accepts.
* **Secure aggregation.** Without it the server sees each site's update with only
  ``1/sqrt(n_sites)`` of the noise: then use ``n_sites=1`` (local DP, each site adds all the noise).
* **Randomness.** :func:`secure_generator` seeds torch's generator (Mersenne Twister on CPU, Philox
  on CUDA) with 64 bits from ``os.urandom``: the seed cannot be guessed, but the stream is not a
  CSPRNG, so never expose a site's raw noise. Floating-point Gaussian sampling has known
  low-order-bit artefacts (Mironov 2012); the later quantisation to integers for secure
  aggregation blurs them but this is not a formal proof.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import torch

from ai4hi_sdk.privacy.dp.accountants.base import InvalidPrivacyParameter, check_noise_multiplier

Delta = Mapping[str, torch.Tensor]


def _check_floating(delta: Delta) -> None:
    for name, tensor in delta.items():
        if not torch.is_tensor(tensor):
            raise TypeError(f"client-level DP: '{name}' is not a tensor ({type(tensor).__name__})")
        if not torch.is_floating_point(tensor):
            raise TypeError(
                f"client-level DP needs floating-point tensors; '{name}' is {tensor.dtype} "
                "(drop or convert integer buffers such as num_batches_tracked before clipping)"
            )


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not 0 < value < math.inf:
        raise InvalidPrivacyParameter(f"{name} must be a finite number > 0, got {value:g}")
    return value


def l2_norm(delta: Delta) -> float:
    """Global L2 norm of all tensors together (accumulated in float64)."""
    _check_floating(delta)
    total = 0.0
    for tensor in delta.values():
        total += float(torch.sum(tensor.detach().to(torch.float64) ** 2))
    return math.sqrt(total)


def clip_by_l2(delta: Delta, max_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """Scale the whole update so its global L2 norm is at most ``max_norm``.

    Returns ``(clipped, original_norm)``; ``clipped`` holds new tensors (inputs untouched), scaled
    by ``min(1, max_norm / original_norm)``.
    """
    max_norm = _positive("clip norm", max_norm)
    norm = l2_norm(delta)
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    clipped = {}
    for name, tensor in delta.items():
        scaled = tensor.detach().to(torch.float64) * scale
        clipped[name] = scaled.to(tensor.dtype)
    if scale < 1.0:  # float rounding on the cast back must not push the norm over max_norm
        over = l2_norm(clipped) / max_norm
        if over > 1.0:
            clipped = {k: (v.to(torch.float64) / (over * (1 + 1e-7))).to(v.dtype) for k, v in clipped.items()}
    return clipped, norm


def noise_std_per_site(noise_multiplier: float, clip: float, n_sites: int) -> float:
    """Standard deviation each site adds: ``noise_multiplier * clip / sqrt(n_sites)``."""
    sigma = check_noise_multiplier(noise_multiplier)
    clip = _positive("clip norm", clip)
    if isinstance(n_sites, bool) or int(n_sites) != n_sites or n_sites < 1:
        raise InvalidPrivacyParameter(f"n_sites must be a whole number >= 1, got {n_sites!r}")
    return sigma * clip / math.sqrt(int(n_sites))


def effective_noise_multiplier(noise_multiplier: float, n_sites: int, honest_sites: int) -> float:
    """Noise multiplier the sum really carries when only ``honest_sites`` of ``n_sites`` added noise."""
    if not 0 <= honest_sites <= n_sites or n_sites < 1:
        raise InvalidPrivacyParameter(f"need 0 <= honest_sites ({honest_sites}) <= n_sites ({n_sites}), n_sites >= 1")
    return check_noise_multiplier(noise_multiplier) * math.sqrt(honest_sites / n_sites)


def secure_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with 64 bits from ``os.urandom`` (never a fixed seed)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(os.urandom(8), "little"))
    return generator


def add_distributed_gaussian_noise(
    delta: Delta,
    noise_multiplier: float,
    clip: float,
    n_sites: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``delta`` plus this site's share of the noise, N(0, (noise_multiplier*clip)^2 / n_sites).

    Noise is drawn in float32 (float64 for float64 tensors) on the generator's device (a fresh
    :func:`secure_generator` on each tensor's device if none is given) and added to new tensors.
    """
    _check_floating(delta)
    std = noise_std_per_site(noise_multiplier, clip, n_sites)
    generators: dict[str, torch.Generator] = {}
    noised = {}
    for name, tensor in delta.items():
        gen = generator
        if gen is None:
            key = str(tensor.device)
            gen = generators.setdefault(key, secure_generator(tensor.device))
        dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        noise = torch.randn(tensor.shape, generator=gen, dtype=dtype, device=gen.device)
        noised[name] = (tensor.detach().to(dtype) + noise.to(tensor.device) * std).to(tensor.dtype)
    return noised


def privatize_delta(
    delta: Delta,
    clip: float,
    noise_multiplier: float,
    n_sites: int,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Clip then add this site's noise share; returns ``(noised, original_norm)``."""
    clipped, norm = clip_by_l2(delta, clip)
    return add_distributed_gaussian_noise(clipped, noise_multiplier, clip, n_sites, generator), norm

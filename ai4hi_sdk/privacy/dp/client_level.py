"""Client-level (distributed) differential privacy for a site's model delta.

Each site clips its whole update (all tensors together) to L2 norm ``clip`` and adds Gaussian
noise of standard deviation ``noise_multiplier * clip / sqrt(n_sites)`` to every coordinate,
*before* secure-aggregation masking. The server only ever sees the masked vectors and their
sum, and the sum of ``n_sites`` independent noises is ``N(0, (noise_multiplier * clip)^2)``
per coordinate: the Gaussian mechanism with noise multiplier ``noise_multiplier`` for a sum in
which one site's contribution has L2 sensitivity ``clip``. Over rounds, account it like DP-SGD
with ``sample_rate`` = fraction of sites sampled per round (1.0 when all train) and one step
per round, e.g. ``RDPAccountant().step(noise_multiplier, 1.0, rounds)`` -> client-level epsilon.

Who sets ``n_sites``: **the site, never the server.** A server that claims 10,000 sites would cut
every site's noise 100x. :func:`noise_share_std` therefore takes the *names* of the participants
the site's own secure-aggregation client verified (``SecAggClient.participants(round)``: consortium
sites of this job with valid signed keys), and ``None`` without secure aggregation, when the server
sees each update on its own and every site adds the full noise (local DP). It refuses a bare
count. (The older ``n_sites`` argument of :func:`add_distributed_gaussian_noise` /
:func:`privatize_delta` also takes these names or ``None``; an ``int`` there is the caller's
responsibility and must never come from the server.)

Assumptions (say them when you report the guarantee):

* **Honest noise.** The guarantee needs the noise of the sites whose updates are summed. If only
  ``h`` of the ``n`` participants' vectors reach the sum (the others dropped out after sizing their
  noise), the sum carries ``noise_multiplier * sqrt(h / n)``: :func:`surviving_noise_multiplier`
  from the verified survivor set of the consistency round. :func:`noise_shortfall` turns a
  policy minimum into a reason to refuse the unmask step (pass it as the secure-aggregation
  client's ``reveal_check``: the round is then abandoned before anything is unmasked), or book
  the actual multiplier. Sites that collude with the server and subtract their own noise are not
  covered (:func:`effective_noise_multiplier` for ``h`` honest sites).
* **Randomness.** :func:`secure_generator` seeds torch's generator (Mersenne Twister on CPU, Philox
  on CUDA) with 64 bits from ``os.urandom``: the seed cannot be guessed, but the stream is not a
  CSPRNG, so never expose a site's raw noise. Floating-point Gaussian sampling has known
  low-order-bit artefacts (Mironov 2012); the later quantisation to integers for secure
  aggregation blurs them but this is not a formal proof.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
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


def _participant_count(participants: Collection[str] | None, what: str = "participants") -> int:
    """How many distinct verified participants (1 without secure aggregation)."""
    if participants is None:
        return 1
    if isinstance(participants, (str, bytes)) or not isinstance(participants, Collection):
        raise TypeError(f"{what} must be the names of the participants the site verified (or None without "
                        f"secure aggregation), not {type(participants).__name__}: a count could come from "
                        "the server")
    names = set(participants)
    if not names or not all(isinstance(p, str) and p for p in names):
        raise InvalidPrivacyParameter(f"{what} must be non-empty site names, got {sorted(map(str, names))}")
    return len(names)


def noise_share_std(noise_multiplier: float, clip: float, participants: Collection[str] | None) -> float:
    """Standard deviation this site adds: ``noise_multiplier * clip / sqrt(n)`` with ``n`` the number
    of participants **the site verified itself** (names from its secure-aggregation client), or the
    full ``noise_multiplier * clip`` when ``participants`` is ``None`` (no secure aggregation).
    Raises TypeError for a count (or anything but a collection of names)."""
    return noise_std_per_site(noise_multiplier, clip, _participant_count(participants))


def surviving_noise_multiplier(noise_multiplier: float, participants: Collection[str],
                               survivors: Collection[str]) -> float:
    """Noise multiplier of the sum when only ``survivors`` (verified in the consistency round) of the
    ``participants`` each site sized its noise for are in it: ``sigma * sqrt(|S & P| / |P|)``."""
    n = _participant_count(participants)
    alive = len(set(survivors) & set(participants))
    return effective_noise_multiplier(noise_multiplier, n, alive)


def noise_shortfall(participants: Collection[str], survivors: Collection[str], *, noise_multiplier: float,
                    min_noise_multiplier: float) -> str | None:
    """``None`` if the survivors' noise shares still give at least ``min_noise_multiplier``, else
    the reason to refuse unmasking (signature of ``SecAggClient(reveal_check=...)`` once the two
    keyword arguments are bound, e.g. with :func:`functools.partial`)."""
    actual = surviving_noise_multiplier(noise_multiplier, participants, survivors)
    if actual + 1e-12 < float(min_noise_multiplier):
        return (f"only {len(set(survivors) & set(participants))} of {len(set(participants))} sites survived: the sum "
                f"carries noise multiplier {actual:.4g} < the site's minimum {float(min_noise_multiplier):g}")
    return None


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
    n_sites: int | Collection[str] | None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``delta`` plus this site's share of the noise, N(0, (noise_multiplier*clip)^2 / n).

    ``n_sites``: the verified participant names (``n`` = how many; see :func:`noise_share_std`),
    ``None`` without secure aggregation (``n = 1``, full noise), or a count the caller vouches for.
    Noise is drawn in float32 (float64 for float64 tensors) on the generator's device (a fresh
    :func:`secure_generator` on each tensor's device if none is given) and added to new tensors.
    """
    _check_floating(delta)
    if isinstance(n_sites, int):
        std = noise_std_per_site(noise_multiplier, clip, n_sites)
    else:  # verified names, or None; a str is refused there (TypeError)
        std = noise_share_std(noise_multiplier, clip, n_sites)
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
    n_sites: int | Collection[str] | None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Clip then add this site's noise share (``n_sites`` as in :func:`add_distributed_gaussian_noise`);
    returns ``(noised, original_norm)``."""
    clipped, norm = clip_by_l2(delta, clip)
    return add_distributed_gaussian_noise(clipped, noise_multiplier, clip, n_sites, generator), norm

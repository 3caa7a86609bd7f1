"""Privacy-loss-random-variable (PRV) accountant (Gopi et al. 2021) for Poisson-subsampled Gaussian steps.

The maths is opacus's (``opacus.accountants.analysis.prv``): each distinct ``(sigma, q)`` is a PRV,
truncated to a safe domain, discretised on a mesh and self-composed by FFT; epsilon is read from
the composed density. Defaults are opacus's (``eps_error=0.01``, ``delta_error=delta/1000``) and,
like opacus, the **upper** bound ``eps_estimate + eps_error`` is returned: a guarantee, not an
estimate. PRV is tighter than RDP (MNIST setting: 2.39 vs 2.60) but costs ~0.1-1 s per call,
and more per distinct ``(sigma, q)``.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import numpy as np

from ai4hi_sdk.privacy.dp.accountants.base import Composition, InvalidPrivacyParameter, PrivacyAccountant

DEFAULT_EPS_ERROR = 0.01


class PRVAccountant(PrivacyAccountant):
    """PRV accountant.

    Args:
        history: initial compositions ``(noise_multiplier, sample_rate, steps)``.
        eps_error: allowed error in epsilon (added to the estimate: the result is an upper bound).
        delta_error: allowed error in delta; default ``delta / 1000``.
    """

    mechanism = "prv"

    def __init__(
        self,
        history: Iterable[Iterable[Any]] = (),
        eps_error: float = DEFAULT_EPS_ERROR,
        delta_error: float | None = None,
    ):
        super().__init__(history)
        if not eps_error > 0:
            raise InvalidPrivacyParameter(f"eps_error must be > 0, got {eps_error!r}")
        if delta_error is not None and not delta_error > 0:
            raise InvalidPrivacyParameter(f"delta_error must be > 0, got {delta_error!r}")
        self.eps_error = float(eps_error)
        self.delta_error = None if delta_error is None else float(delta_error)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.eps_error != DEFAULT_EPS_ERROR:
            out["eps_error"] = self.eps_error
        if self.delta_error is not None:
            out["delta_error"] = self.delta_error
        return out

    def _compute_epsilon(self, history: list[Composition], delta: float) -> float:
        from opacus.accountants.analysis.prv import (
            Domain,
            PoissonSubsampledGaussianPRV,
            TruncatedPrivacyRandomVariable,
            compose_heterogeneous,
            compute_safe_domain_size,
            discretize,
        )

        eps_error = self.eps_error
        delta_error = delta / 1000 if self.delta_error is None else self.delta_error
        if delta_error >= delta:
            raise InvalidPrivacyParameter(f"delta_error ({delta_error:g}) must be smaller than delta ({delta:g})")
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # numpy overflow in tails, opacus's RDP-order hint
            prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
            counts = [steps for _, _, steps in history]
            half_width = compute_safe_domain_size(
                prvs=prvs, max_self_compositions=counts, eps_error=eps_error, delta_error=delta_error
            )
            mesh = eps_error / np.sqrt(sum(counts) * np.log(12 / delta_error) / 2)
            domain = Domain.create_aligned(-half_width, half_width, mesh)
            dprvs = [discretize(TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max), domain) for p in prvs]
            composed = compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts)
            _, _, eps_upper = composed.compute_epsilon(delta, delta_error, eps_error)
        return float(eps_upper)

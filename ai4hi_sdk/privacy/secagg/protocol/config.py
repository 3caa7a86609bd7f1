"""Configuration of the SecAgg+ protocol, validated up front (incl. the overflow guard).

The one configuration of a job's secure aggregation: the protocol (graph, threshold, cipher), the
server adapter (timeouts) and the payload layout (clip, weight bound, masked metrics) read it; the
job spec's ``privacy.secure_aggregation`` section is translated into it by
:func:`ai4hi_sdk.privacy.secagg.settings.protocol_config`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..primitives.keystream import CIPHERS, DEFAULT_CIPHER
from ..primitives.quantize import QuantizationConfig
from .payload import delta_quantization


@dataclass(frozen=True)
class SecAggConfig:
    """Args:
        neighbours: k of the k-regular masking graph; None = the full graph.
        threshold: t, shares needed to unmask; None = ``floor(2m/3) + 1`` of the neighbourhood m
            (Bonawitz, active server). Each site checks it against its own floor (:mod:`.policy`).
        clip: every delta element is clipped to ``[-clip, clip]`` before quantisation.
        max_samples_per_site: public bound on a site's weight (training examples).
        secure_metrics: the declared training metrics travel masked too (consortium means only).
        cipher: the mask keystream's cipher (AES-128-CTR: 128-bit security, as X25519 gives).
        key_timeout_s: seconds the server waits for each protocol step's replies (keys, shares,
            consistency, unmask).
    """

    neighbours: int | None = None
    threshold: int | None = None
    clip: float = 1.0
    max_samples_per_site: int = 10_000
    secure_metrics: bool = True
    cipher: str = DEFAULT_CIPHER
    key_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.neighbours is not None and (not isinstance(self.neighbours, int) or self.neighbours < 2):
            raise ValueError(f"neighbours (k) must be None or an int >= 2, got {self.neighbours!r}")
        if self.threshold is not None and (not isinstance(self.threshold, int) or self.threshold < 2):
            raise ValueError(f"threshold (t) must be None or an int >= 2, got {self.threshold!r}")
        if self.cipher not in CIPHERS:
            raise ValueError(f"cipher must be one of {', '.join(CIPHERS)}, got {self.cipher!r}")
        v = self.key_timeout_s
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"key_timeout_s must be a positive finite number of seconds, got {v!r}")
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive finite number, got {self.clip!r}")
        w = self.max_samples_per_site
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"max_samples_per_site must be an int >= 1, got {w!r}")

    def degree(self, n_sites: int) -> int:
        """Neighbourhood size actually used for ``n_sites`` sites (full graph when k >= n-1)."""
        if self.neighbours is None or self.neighbours >= n_sites - 1:
            return n_sites - 1
        return self.neighbours

    def effective_threshold(self, n_sites: int) -> int:
        """t for ``n_sites`` sites: configured, or ``floor(2m/3) + 1`` of the neighbourhood ``m``
        (self included), >= 2. Each site still checks it against its own floor (:mod:`.policy`)."""
        size = self.degree(n_sites) + 1
        t = self.threshold if self.threshold is not None else max(2, (2 * size) // 3 + 1)
        if t > size:
            raise ValueError(f"threshold {t} exceeds neighbourhood size {size} (k={self.degree(n_sites)})")
        return t

    def quantization(self, n_sites: int) -> QuantizationConfig:
        """The fixed-point format of the delta for ``n_sites`` sites: the scale the payload codec
        quantises with (:meth:`~.payload.PayloadCodec.delta_config`), the largest power of two whose
        sum cannot overflow. Raises OverflowRiskError when no scale can (or the weights' sum could
        overflow)."""
        return delta_quantization(self.clip, n_sites, self.max_samples_per_site)

    def validate_for(self, n_sites: int) -> None:
        """Refuse configurations unusable for ``n_sites`` sites (too few sites, t too large, overflow)."""
        if n_sites < 3:
            raise ValueError(f"secure aggregation needs at least 3 sites, got {n_sites}")
        self.effective_threshold(n_sites)
        self.quantization(n_sites)

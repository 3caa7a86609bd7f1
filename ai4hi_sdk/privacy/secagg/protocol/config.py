"""Configuration of the SecAgg+ protocol, validated up front (incl. the overflow guard)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..primitives.keystream import CIPHERS, DEFAULT_CIPHER
from ..primitives.quantize import check_no_overflow


@dataclass(frozen=True)
class SecAggConfig:
    neighbours: int | None = None  # k; None = full graph
    threshold: int | None = None  # t; None = floor(2m/3) + 1 of the neighbourhood m (Bonawitz, active server)
    clip: float = 1.0
    scale: float = 2.0**16
    bits: int = 32
    cipher: str = DEFAULT_CIPHER  # AES-128-CTR: 128-bit security, as X25519 gives
    advertise_timeout_s: float = 60.0
    share_timeout_s: float = 60.0
    input_timeout_s: float = 600.0
    unmask_timeout_s: float = 60.0
    secure_metrics: bool = False

    def __post_init__(self) -> None:
        if self.neighbours is not None and (not isinstance(self.neighbours, int) or self.neighbours < 2):
            raise ValueError(f"neighbours (k) must be None or an int >= 2, got {self.neighbours!r}")
        if self.threshold is not None and (not isinstance(self.threshold, int) or self.threshold < 2):
            raise ValueError(f"threshold (t) must be None or an int >= 2, got {self.threshold!r}")
        if self.cipher not in CIPHERS:
            raise ValueError(f"cipher must be one of {', '.join(CIPHERS)}, got {self.cipher!r}")
        if self.bits != 32:
            raise ValueError(f"only 32-bit quantisation is supported, got bits={self.bits!r}")
        for name in ("advertise_timeout_s", "share_timeout_s", "input_timeout_s", "unmask_timeout_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number of seconds, got {v!r}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive finite number, got {self.clip!r}")

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

    def validate_for(self, n_sites: int) -> None:
        """Refuse configurations unusable for ``n_sites`` sites (too few sites, t too large, overflow)."""
        if n_sites < 3:
            raise ValueError(f"secure aggregation needs at least 3 sites, got {n_sites}")
        self.effective_threshold(n_sites)
        check_no_overflow(self.clip, n_sites, self.scale, self.bits)

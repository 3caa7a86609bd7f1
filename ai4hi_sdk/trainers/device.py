"""Device choice and seeding for site training."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given (e.g. ``"cpu"``, ``"cuda:1"``), else CUDA when present, else CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def derive_seed(base_seed: int, *parts: object) -> int:
    """A 31-bit seed derived from ``base_seed`` and labels (site name, round...), stable across runs."""
    text = "|".join([str(base_seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

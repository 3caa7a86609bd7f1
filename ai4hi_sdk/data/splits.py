"""Deterministic train/val/test assignment by study.

A study's split is a pure function of its StudyInstanceUID: ``sha256(salt + uid)`` read as
a number in [0, 1) and compared with the cumulative fractions. So all images of a study land
in the same split, the assignment is identical on every run and machine, and adding studies
later never moves existing ones (no global shuffle).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Literal

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, Split, Split] = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
DEFAULT_SALT = "ai4hi-split-v1"


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or any(f < 0 or not math.isfinite(f) for f in fractions):
        raise ValueError(f"fractions must be 3 non-negative numbers, got {fractions!r}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})")


def split_unit(study_uid: str, *, salt: str = DEFAULT_SALT) -> float:
    """The study's position in [0, 1): first 8 bytes of sha256(salt + uid), big-endian."""
    digest = hashlib.sha256((salt + study_uid).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(
    study_uid: str,
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
) -> Split:
    """Split ('train', 'val' or 'test') of a study; ``fractions`` = (train, val, test).

    Raises:
        ValueError: fractions are not three non-negative numbers summing to 1.
    """
    _check_fractions(fractions)
    u = split_unit(study_uid.strip(), salt=salt)
    train, val, _ = fractions
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def split_counts(
    study_uids: Iterable[str],
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
) -> dict[Split, int]:
    """Number of distinct studies per split (duplicates in ``study_uids`` count once)."""
    counts: dict[Split, int] = {s: 0 for s in SPLITS}
    for uid in set(study_uids):
        counts[assign_split(uid, fractions=fractions, salt=salt)] += 1
    return counts

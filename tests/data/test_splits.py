from __future__ import annotations

import hashlib
import random

import pytest

from ai4hi_sdk.data.splits import assign_split, split_counts, split_unit

# Regression values: changing these means every site's split changes. Don't.
EXPECTED = {
    "1.2.826.0.1.3680043.8.498.1": "train",
    "1.2.826.0.1.3680043.8.498.2": "test",
    "1.2.826.0.1.3680043.8.498.5": "val",
    "1.2.840.113619.2.55.3.604688119.969.1268071029.320": "train",
    "2.25.329800735698586629295641978511506172918": "val",
}


def _random_uids(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"2.25.{rng.getrandbits(120)}" for _ in range(n)]


def test_regression_values():
    got = {uid: assign_split(uid) for uid in EXPECTED}
    assert got == EXPECTED
    # the documented construction: sha256(salt + uid), first 8 bytes, big-endian / 2**64
    digest = hashlib.sha256(b"ai4hi-split-v1" b"1.2.826.0.1.3680043.8.498.1").digest()
    assert split_unit("1.2.826.0.1.3680043.8.498.1") == int.from_bytes(digest[:8], "big") / 2**64


def test_deterministic_and_pure():
    uids = _random_uids(200)
    first = [assign_split(u) for u in uids]
    assert [assign_split(u) for u in reversed(uids)] == list(reversed(first))
    assert split_unit(uids[0]) == split_unit(uids[0])
    assert 0.0 <= min(split_unit(u) for u in uids) and max(split_unit(u) for u in uids) < 1.0


def test_proportions_over_10k_uids():
    counts = split_counts(_random_uids(10_000))
    assert sum(counts.values()) == 10_000
    # binomial sd at n=10k is <= 0.005: 0.02 is a 4-sigma band
    assert counts["train"] / 10_000 == pytest.approx(0.70, abs=0.02)
    assert counts["val"] / 10_000 == pytest.approx(0.15, abs=0.02)
    assert counts["test"] / 10_000 == pytest.approx(0.15, abs=0.02)


def test_custom_fractions_and_salt():
    uids = _random_uids(2000, seed=1)
    assert split_counts(uids, fractions=(1.0, 0.0, 0.0)) == {"train": 2000, "val": 0, "test": 0}
    half = split_counts(uids, fractions=(0.5, 0.0, 0.5))
    assert half["val"] == 0 and abs(half["train"] - 1000) < 100
    other_salt = [assign_split(u, salt="another-consortium") for u in uids]
    changed = sum(a != b for a, b in zip(other_salt, (assign_split(u) for u in uids)))
    assert changed > 300  # a new salt reshuffles, deliberately


def test_duplicates_count_once():
    uids = _random_uids(10)
    assert sum(split_counts(uids + uids).values()) == 10


@pytest.mark.parametrize(
    "fractions", [(0.7, 0.2, 0.2), (0.5, 0.5), (-0.1, 0.6, 0.5), (float("nan"), 0.5, 0.5)]
)
def test_bad_fractions(fractions):
    with pytest.raises(ValueError):
        assign_split("1.2.3", fractions=fractions)

"""Deterministic k-regular neighbour graph (Harary-style circulant over a seeded permutation)."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable


def neighbour_graph(sites: Iterable[str], k: int | None, seed: bytes = b"") -> dict[str, frozenset[str]]:
    """Map each site to its neighbours. Full graph when k is None or k >= n-1. Otherwise the sorted
    sites are permuted by SHA-256(seed, site) and joined in a circulant: each site links to the k//2
    nearest on each side, plus the opposite site when k is odd (which then requires n even)."""
    ordered = sorted(set(sites))
    n = len(ordered)
    if n < 2:
        raise ValueError("need at least 2 sites")
    if k is None or k >= n - 1:
        return {s: frozenset(x for x in ordered if x != s) for s in ordered}
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k % 2 == 1 and n % 2 == 1:
        raise ValueError(f"no {k}-regular graph on {n} sites (k odd needs an even number of sites)")
    perm = sorted(ordered, key=lambda s: hashlib.sha256(seed + b"\x00" + s.encode()).digest())
    out: dict[str, set[str]] = {s: set() for s in ordered}
    for i, s in enumerate(perm):
        for d in range(1, k // 2 + 1):
            out[s].add(perm[(i + d) % n])
            out[s].add(perm[(i - d) % n])
        if k % 2 == 1:
            out[s].add(perm[(i + n // 2) % n])
    return {s: frozenset(v) for s, v in out.items()}

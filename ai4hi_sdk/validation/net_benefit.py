"""Decision-curve analysis (Vickers & Elkin 2006, Med Decis Making 26:565) from aggregated counts.

A site sends, for each threshold probability ``t`` of the policy's range, the number of true and
false positives of the model at ``t`` on its test split (:func:`net_benefit_counts`); the net
benefit per study is

    NB(t) = TP / n - FP / n * t / (1 - t)

against "treat all" (``prevalence - (1 - prevalence) * t / (1 - t)``) and "treat none" (0).
Counts from several sites add up, so the pooled curve is :func:`net_benefit_curve` of
:func:`pool_counts`. The threshold is read as a probability: use recalibrated scores when the model
version has a recalibration.

Counts at neighbouring thresholds differ by the studies scored between them, a cell that may hold
fewer than ``k`` studies. With ``min_count`` a site merges those cells (both classes together,
from low scores to high) into groups of at least ``k`` studies and counts a group as scoring below
every threshold inside it (its studies placed at its lowest cell), so no difference of two sent
counts describes fewer than ``k`` studies; counts at thresholds between groups are exact.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np


def threshold_grid(lo: float, hi: float, step: float) -> list[float]:
    """``lo, lo + step, ..., hi`` (inclusive, rounded to 6 decimals), each in (0, 1)."""
    if not 0 < lo <= hi < 1 or step <= 0:
        raise ValueError(f"threshold range [{lo}, {hi}] step {step}: need 0 < lo <= hi < 1 and step > 0")
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return [round(lo + i * step, 6) for i in range(n)]


def net_benefit_counts(labels, prob, thresholds: Sequence[float], *, min_count: int | None = None) -> dict[str, Any]:
    """``{"n", "positives", "thresholds": [T], "tp": [T], "fp": [T]}`` (positive means ``prob >= t``);
    with ``min_count`` (k) the cells between thresholds are merged into groups of ``>= k`` studies
    (see the module docstring). ``thresholds`` must be increasing."""
    from ai4hi_sdk.validation.operating_point import k_groups

    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{p.size} scores for {y.size} labels")
    t = np.asarray(thresholds, dtype=np.float64)
    if t.size > 1 and not (np.diff(t) > 0).all():
        raise ValueError("net-benefit thresholds must be increasing")
    # cell c holds the studies with t[c-1] <= p < t[c] (cell 0: below t[0]; cell T: at or above t[-1])
    cell = np.searchsorted(t, p, side="right")
    pos = np.bincount(cell[y == 1], minlength=t.size + 1)
    neg = np.bincount(cell[y == 0], minlength=t.size + 1)
    if min_count is not None:
        merged_pos, merged_neg = np.zeros_like(pos), np.zeros_like(neg)
        for g in k_groups(pos + neg, min_count):
            merged_pos[g[0]] += pos[g].sum()
            merged_neg[g[0]] += neg[g].sum()
        if (pos + neg).sum() < min_count:  # too few studies for any count: all below every threshold
            merged_pos[0], merged_neg[0] = pos.sum(), neg.sum()
        pos, neg = merged_pos, merged_neg
    # positives called at t[j]: the studies in cells j + 1 ... T
    tp = np.cumsum(pos[::-1])[::-1][1:]
    fp = np.cumsum(neg[::-1])[::-1][1:]
    return {"n": int(y.size), "positives": int(y.sum()), "thresholds": [float(x) for x in t],
            "tp": [int(v) for v in tp], "fp": [int(v) for v in fp]}


def pool_counts(counts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum several sites' :func:`net_benefit_counts` (same thresholds required)."""
    counts = list(counts)
    if not counts:
        raise ValueError("no net-benefit counts to pool")
    grid = [float(x) for x in counts[0]["thresholds"]]
    for c in counts[1:]:
        if not np.allclose([float(x) for x in c["thresholds"]], grid):
            raise ValueError("sites used different net-benefit thresholds")
    return {"n": int(sum(c["n"] for c in counts)), "positives": int(sum(c["positives"] for c in counts)),
            "thresholds": grid, "tp": [int(sum(c["tp"][i] for c in counts)) for i in range(len(grid))],
            "fp": [int(sum(c["fp"][i] for c in counts)) for i in range(len(grid))]}


def net_benefit_curve(counts: Mapping[str, Any]) -> dict[str, list[float]]:
    """``{"thresholds", "model", "treat_all", "treat_none"}`` net benefit per study at each threshold."""
    n = float(counts["n"])
    if n <= 0:
        raise ValueError("net benefit needs n > 0")
    t = np.asarray(counts["thresholds"], dtype=np.float64)
    odds = t / (1 - t)
    tp, fp = np.asarray(counts["tp"], dtype=np.float64), np.asarray(counts["fp"], dtype=np.float64)
    prev = float(counts["positives"]) / n
    return {"thresholds": t.tolist(), "model": (tp / n - fp / n * odds).tolist(),
            "treat_all": (prev - (1 - prev) * odds).tolist(), "treat_none": [0.0] * t.size}

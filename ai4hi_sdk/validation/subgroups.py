"""Subgroup audit with small-cell suppression and optional DP-noised counts.

Output is ``{attribute: {value: cell}}`` where a cell is either
``{"n", "auroc", "sensitivity", "specificity"}`` or ``{"suppressed": True}``. Rules:

* primary suppression: every cell with n < ``min_count`` is replaced by ``{"suppressed": True}``;
* complementary suppression: if exactly one cell of an attribute is suppressed, the smallest other
  cell is suppressed too, so the hidden count cannot be recovered as total minus the shown counts;
* within a shown cell a metric needing one class (sensitivity: positives; specificity: negatives;
  AUROC: both) is ``None`` unless that class has at least ``min_count`` examples, so a rate over a
  handful of patients is never shown; class counts themselves are never shown;
* with ``dp_epsilon`` the shown ``n`` is Laplace-noised (sensitivity 1, scale 1/epsilon, seeded),
  rounded and clipped at 0. Suppression is decided on the true counts.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

SUPPRESSED = {"suppressed": True}


def _cell(y: np.ndarray, p: np.ndarray, threshold: float, k: int) -> dict:
    pos, neg = int(y.sum()), int(y.size - y.sum())
    pred = p >= threshold
    return {
        "n": int(y.size),
        "auroc": float(roc_auc_score(y, p)) if pos >= k and neg >= k and pos and neg else None,
        "sensitivity": float(pred[y == 1].mean()) if pos >= k and pos else None,
        "specificity": float((~pred[y == 0]).mean()) if neg >= k and neg else None,
    }


def subgroup_audit(
    labels,
    prob,
    attributes: dict[str, list[str]],
    *,
    min_count: int = 10,
    threshold: float = 0.5,
    dp_epsilon: float | None = None,
    seed: int = 0,
) -> dict[str, dict[str, dict]]:
    """Per attribute, per value: aggregate metrics, small cells suppressed (see module doc)."""
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError("labels and prob must have the same length")
    if dp_epsilon is not None and dp_epsilon <= 0:
        raise ValueError("dp_epsilon must be > 0")
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, dict]] = {}
    for attr, values in attributes.items():
        vals = np.array(["unknown" if v is None else str(v) for v in values])
        if vals.shape != y.shape:
            raise ValueError(f"attribute {attr!r} has {vals.size} values for {y.size} examples")
        levels = sorted(set(vals.tolist()))
        hidden = hidden_levels(vals, min_count)
        cells: dict[str, dict] = {}
        for v in levels:
            if v in hidden:
                cells[v] = dict(SUPPRESSED)
                continue
            sel = vals == v
            cell = _cell(y[sel], p[sel], threshold, min_count)
            if dp_epsilon is not None:
                cell["n"] = max(0, int(round(cell["n"] + rng.laplace(0.0, 1.0 / dp_epsilon))))
                cell["n_noised"] = True
            cells[v] = cell
        out[attr] = cells
    return out


def hidden_levels(values: np.ndarray, min_count: int) -> set[str]:
    """The levels of one attribute (``values``: one string per example) to suppress: every level
    with fewer than ``min_count`` examples and, when that is exactly one, the smallest other level
    too (complementary suppression: the hidden count is not total minus the shown ones)."""
    vals = np.asarray(values)
    levels = sorted(set(vals.tolist()))
    counts = {v: int((vals == v).sum()) for v in levels}
    hidden = {v for v in levels if counts[v] < min_count}
    if len(hidden) == 1 and len(levels) > 1:
        shown = sorted((c, v) for v, c in counts.items() if v not in hidden)
        hidden.add(shown[0][1])
    return hidden


def audit_cells(subgroups: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Egress form ``{attr: {"cells": {...}, "suppressed_cells": k}}`` -> :func:`subgroup_audit` form
    ``{attr: {value: cell}}`` (the suppressed cells are not in it: they were never named)."""
    return {attr: dict(d.get("cells", {})) for attr, d in (subgroups or {}).items()}


def subgroup_gaps(audit: dict[str, dict[str, dict]], metric: str) -> dict[str, float | None]:
    """Per attribute: max minus min of ``metric`` over shown cells with a value (None if < 2 such cells)."""
    gaps: dict[str, float | None] = {}
    for attr, cells in audit.items():
        vals = [c[metric] for c in cells.values()
                if not c.get("suppressed") and c.get(metric) is not None and not math.isnan(c[metric])]
        gaps[attr] = float(max(vals) - min(vals)) if len(vals) >= 2 else None
    return gaps


def max_gap(audit: dict[str, dict[str, dict]], metric: str) -> float | None:
    """Largest difference of ``metric`` between unsuppressed subgroups of the same attribute."""
    gaps = [g for g in subgroup_gaps(audit, metric).values() if g is not None]
    return max(gaps) if gaps else None

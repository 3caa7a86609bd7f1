"""Fixed-effect (inverse variance) and random-effects (DerSimonian-Laird) meta-analysis of site effects."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import chi2, norm


def fixed_effect(effects, variances, *, ci: float = 0.95) -> dict:
    """Inverse-variance pooled effect: ``{"estimate", "se", "ci": [lo, hi], "k"}``."""
    y = np.asarray(effects, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if y.size == 0 or y.shape != v.shape or np.any(v <= 0):
        raise ValueError("need >= 1 effect with a positive variance each")
    w = 1 / v
    est = float((w * y).sum() / w.sum())
    se = math.sqrt(1 / w.sum())
    z = norm.ppf(0.5 + ci / 2)
    return {"estimate": est, "se": se, "ci": [est - z * se, est + z * se], "k": int(y.size)}


def random_effects(effects, variances, *, ci: float = 0.95) -> dict:
    """DerSimonian-Laird random effects.

    Returns ``{"estimate", "se", "ci", "tau2", "q", "q_p_value", "i2", "k", "fixed": fixed_effect(...)}``;
    ``i2`` is in [0, 1] (a share, not a percentage).
    """
    y = np.asarray(effects, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    fe = fixed_effect(y, v, ci=ci)
    k = y.size
    w = 1 / v
    q = float((w * (y - fe["estimate"]) ** 2).sum())
    c = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
    wr = 1 / (v + tau2)
    est = float((wr * y).sum() / wr.sum())
    se = math.sqrt(1 / wr.sum())
    z = norm.ppf(0.5 + ci / 2)
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    return {
        "estimate": est,
        "se": se,
        "ci": [est - z * se, est + z * se],
        "tau2": float(tau2),
        "q": q,
        "q_p_value": float(chi2.sf(q, k - 1)) if k > 1 else float("nan"),
        "i2": float(i2),
        "k": int(k),
        "fixed": fe,
    }

"""Two-sample drift tests that return only statistics and p-values (never the data)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import chi2_contingency, ks_2samp


def categorical_drift(reference_counts: dict[str, int], current_counts: dict[str, int]) -> dict:
    """Chi-square test of homogeneity on two category->count tables. ``{"test", "statistic", "p_value", "dof"}``."""
    cats = sorted(set(reference_counts) | set(current_counts))
    table = np.array([[reference_counts.get(c, 0) for c in cats], [current_counts.get(c, 0) for c in cats]], float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or np.any(table.sum(axis=1) == 0):
        return {"test": "chi2", "statistic": 0.0, "p_value": 1.0, "dof": 0}
    stat, p, dof, _ = chi2_contingency(table, correction=False)
    return {"test": "chi2", "statistic": float(stat), "p_value": float(p), "dof": int(dof)}


def numeric_drift(reference, current) -> dict:
    """Two-sample Kolmogorov-Smirnov test. ``{"test", "statistic", "p_value"}``."""
    res = ks_2samp(np.asarray(reference, float).ravel(), np.asarray(current, float).ravel())
    return {"test": "ks", "statistic": float(res.statistic), "p_value": float(res.pvalue)}


def _sq_dists(z: np.ndarray) -> np.ndarray:
    sq = (z**2).sum(axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)


def mmd_permutation_test(X, Y, *, n_permutations: int = 500, seed: int = 0, bandwidth="median") -> dict:
    """Gaussian-kernel MMD^2 (biased V-statistic) with a permutation p-value.

    ``bandwidth`` is a float sigma or ``"median"`` (median pairwise distance of the pooled sample).
    p-value = (1 + #{perm >= observed}) / (1 + n_permutations).
    """
    x = np.asarray(X, float)
    y = np.asarray(Y, float)
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    z = np.vstack([x, y])
    d2 = _sq_dists(z)
    if bandwidth == "median":
        iu = np.triu_indices(len(z), 1)
        sigma = float(np.sqrt(np.median(d2[iu]))) or 1.0
    else:
        sigma = float(bandwidth)
    k = np.exp(-d2 / (2 * sigma**2))
    n, m = len(x), len(z)

    def stat(mask: np.ndarray) -> float:
        a = mask.astype(float) / n
        b = (~mask).astype(float) / (m - n)
        w = a - b
        return float(w @ k @ w)

    base = np.zeros(m, bool)
    base[:n] = True
    observed = stat(base)
    rng = np.random.default_rng(seed)
    # batched: W (P, m), stats = rowwise w K w
    w = np.empty((n_permutations, m))
    for i in range(n_permutations):
        perm = np.zeros(m, bool)
        perm[rng.permutation(m)[:n]] = True
        w[i] = np.where(perm, 1.0 / n, -1.0 / (m - n))
    perm_stats = np.einsum("ij,jk,ik->i", w, k, w, optimize=True)
    p = (1 + int((perm_stats >= observed - 1e-12).sum())) / (1 + n_permutations)
    return {"test": "mmd", "statistic": observed, "p_value": float(p), "bandwidth": sigma,
            "n_permutations": int(n_permutations)}


@dataclass
class DriftAlarm:
    """Combine several tests' results: alarm when any p-value < alpha / number of tests (Bonferroni)."""

    alpha: float = 0.05
    results: dict[str, dict] = field(default_factory=dict)

    def add(self, name: str, result: dict) -> "DriftAlarm":
        self.results[name] = result
        return self

    @property
    def corrected_alpha(self) -> float:
        return self.alpha / max(len(self.results), 1)

    @property
    def fired(self) -> bool:
        return bool(self.triggered)

    @property
    def triggered(self) -> list[str]:
        return [name for name, r in self.results.items() if r["p_value"] < self.corrected_alpha]

    def summary(self) -> dict:
        return {"alarm": self.fired, "alpha": self.alpha, "corrected_alpha": self.corrected_alpha,
                "triggered": self.triggered,
                "tests": {name: {k: v for k, v in r.items()} for name, r in self.results.items()}}

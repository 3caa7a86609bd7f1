"""Classification validation report: AUROC with a DeLong confidence interval, operating point, calibration.

Pure functions; inputs are per-example arrays that stay at the site, outputs are aggregates only.

The AUROC variance is DeLong's (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837) computed with
the midrank algorithm of Sun & Xu (2014, IEEE SPL 21:1389). The interval is the normal interval of
the AUROC on the logit scale (kept inside (0, 1)); the paired difference uses the plain scale.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import brier_score_loss, roc_auc_score


def _midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (ties get the average rank), 1-based."""
    return rankdata(x, method="average")


def delong_auc_cov(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of ``k`` score vectors (shape ``(k, n)``) on the same labels and their DeLong covariance."""
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = scores[:, labels == 1], scores[:, labels == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("AUROC needs both classes present")
    k = scores.shape[0]
    tx = np.array([_midrank(pos[r]) for r in range(k)])
    ty = np.array([_midrank(neg[r]) for r in range(k)])
    tz = np.array([_midrank(np.concatenate([pos[r], neg[r]])) for r in range(k)])
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n  # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m  # ... of the negatives
    sx = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((k, k))
    sy = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((k, k))
    return aucs, sx / m + sy / n


def _logit_ci(auc: float, var: float, ci: float) -> tuple[float, float]:
    z = norm.ppf(0.5 + ci / 2)
    if var <= 0 or auc <= 0 or auc >= 1:
        return (auc, auc)
    logit = math.log(auc / (1 - auc))
    se = math.sqrt(var) / (auc * (1 - auc))  # delta method
    lo, hi = logit - z * se, logit + z * se
    return (1 / (1 + math.exp(-lo)), 1 / (1 + math.exp(-hi)))


def expected_calibration_error(labels: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE with ``n_bins`` equal-width bins on [0, 1]: sum over bins of |mean(prob) - mean(label)| * share."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    prob = np.asarray(prob, dtype=np.float64).ravel()
    bins = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += abs(prob[sel].mean() - labels[sel].mean()) * sel.mean()
    return float(ece)


def _bootstrap_ci(y: np.ndarray, p: np.ndarray, n_bootstrap: int, ci: float, seed: int) -> tuple[float, float, float]:
    """Stratified (per-class) percentile bootstrap of the AUROC: (lo, hi, variance)."""
    rng = np.random.default_rng(seed)
    pos, neg = p[y == 1], p[y == 0]
    m, n = pos.size, neg.size
    aucs = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        s = np.concatenate([rng.choice(pos, m), rng.choice(neg, n)])
        ranks = _midrank(s)
        aucs[b] = (ranks[:m].sum() - m * (m + 1) / 2) / (m * n)
    lo, hi = np.percentile(aucs, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi), float(aucs.var(ddof=1))


def classification_report(
    labels,
    prob,
    *,
    threshold: float = 0.5,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    ci_method: str = "delong",
) -> dict:
    """Aggregate metrics of a binary classifier on a fixed test split.

    Returns ``{"n", "positives", "auroc", "auroc_ci": [lo, hi], "auroc_var", "ci_method",
    "threshold", "sensitivity", "specificity", "ece", "brier"}``. AUROC fields are NaN/None when only
    one class is present. ``ci_method="delong"`` (default, analytic; ``n_bootstrap``/``seed`` unused) or
    ``"bootstrap"`` (stratified percentile bootstrap with ``n_bootstrap`` resamples from ``seed``).
    """
    if ci_method not in ("delong", "bootstrap"):
        raise ValueError("ci_method must be 'delong' or 'bootstrap'")
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError("labels and prob must have the same length")
    n, positives = int(y.size), int(y.sum())
    pred = p >= threshold
    out: dict = {
        "n": n,
        "positives": positives,
        "threshold": float(threshold),
        "ci": float(ci),
        "ci_method": "delong-logit" if ci_method == "delong" else "stratified-bootstrap",
        "sensitivity": float(pred[y == 1].mean()) if positives else float("nan"),
        "specificity": float((~pred[y == 0]).mean()) if n - positives else float("nan"),
        "ece": expected_calibration_error(y, p) if n else float("nan"),
        "brier": float(brier_score_loss(y, p)) if n else float("nan"),
    }
    if 0 < positives < n:
        if ci_method == "delong":
            aucs, cov = delong_auc_cov(y, p[None, :])
            auc, var = float(aucs[0]), float(cov[0, 0])
            interval = list(_logit_ci(auc, var, ci))
        else:
            lo, hi, var = _bootstrap_ci(y, p, n_bootstrap, ci, seed)
            interval = [lo, hi]
        out.update(auroc=float(roc_auc_score(y, p)), auroc_var=var, auroc_ci=interval)
    else:
        out.update(auroc=float("nan"), auroc_var=float("nan"), auroc_ci=None)
    return out


def paired_auroc_difference(labels, prob_candidate, prob_champion, *, ci: float = 0.95) -> dict:
    """Paired DeLong test of candidate minus champion AUROC on the same examples.

    Returns ``{"n", "auroc_candidate", "auroc_champion", "delta", "variance", "ci": [lo, hi], "z", "p_value"}``.
    """
    y = np.asarray(labels).astype(int).ravel()
    scores = np.vstack([np.asarray(prob_candidate, dtype=np.float64).ravel(),
                        np.asarray(prob_champion, dtype=np.float64).ravel()])
    aucs, cov = delong_auc_cov(y, scores)
    delta = float(aucs[0] - aucs[1])
    var = float(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0))
    z_crit = norm.ppf(0.5 + ci / 2)
    se = math.sqrt(var)
    z = delta / se if se > 0 else (0.0 if delta == 0 else math.copysign(math.inf, delta))
    return {
        "n": int(y.size),
        "auroc_candidate": float(aucs[0]),
        "auroc_champion": float(aucs[1]),
        "delta": delta,
        "variance": var,
        "ci": [delta - z_crit * se, delta + z_crit * se],
        "z": float(z),
        "p_value": float(2 * norm.sf(abs(z))),
    }

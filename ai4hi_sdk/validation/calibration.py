"""Federated recalibration (Platt or temperature scaling) from per-class logit histograms.

Sites send the ``"calibration"`` part of :func:`~ai4hi_sdk.validation.operating_point.operating_point_payload`
(per-class counts of their validation scores in the fixed logit bins); the server sums them and fits

* **Platt scaling**: ``p' = sigmoid(a z + b)`` with ``z = logit(p)`` (fixes an offset *and* a
  spread: a model that predicts about 0.3 for everyone but ranks well needs ``b``);
* **temperature scaling**: ``p' = sigmoid(z / T)`` (one parameter; fixes over/under-confidence
  only, never an offset),

by minimising the binomial negative log-likelihood of the binned data (each bin's studies at the
bin's centre logit). With 0.05-wide logit bins this is the central fit on the pooled raw scores up
to the binning (see ``tests/validation/test_calibration.py``).

At each site, :func:`calibration_summary` gives ECE, Brier and calibration-in-the-large (observed
minus mean predicted rate) before and after applying the fitted map to the site's own test scores;
:func:`histogram_calibration_metrics` gives pooled ECE and Brier from the summed histograms.
Recalibration is monotone (``a > 0``, ``T > 0``): ranking and AUROC are unchanged, and a threshold
moves with :func:`calibrate_threshold`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit

from ai4hi_sdk.validation.classification import expected_calibration_error
from ai4hi_sdk.validation.operating_point import N_BINS, bin_centres_logit

Method = Literal["platt", "temperature"]
_EPS = 1e-12
#: a Platt slope (or |offset|) beyond this is a diverged fit, not a calibration (logits x 100)
MAX_SLOPE = 100.0


def _binned(histogram: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(pos, neg, z_pos, z_neg)``: counts per bin and class, and the mean logit of each class's
    studies in the bin (the bin centre where the payload has no logit sums or the bin is empty)."""
    pos = np.asarray(histogram.get("pos", []), dtype=np.float64)
    neg = np.asarray(histogram.get("neg", []), dtype=np.float64)
    if pos.shape != (N_BINS,) or neg.shape != (N_BINS,):
        raise ValueError(f"calibration histogram: expected {N_BINS} bins per class")
    if pos.sum() <= 0 or neg.sum() <= 0:
        raise ValueError("recalibration needs positives and negatives in the histograms")
    centre = bin_centres_logit()

    def mean_logit(counts: np.ndarray, key: str) -> np.ndarray:
        if key not in histogram:
            return centre
        sums = np.asarray(histogram[key], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.where(counts > 0, counts, 1), centre)

    return pos, neg, mean_logit(pos, "pos_logit_sum"), mean_logit(neg, "neg_logit_sum")


def _nll(s_pos: np.ndarray, s_neg: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """Binomial NLL (nats per study) of calibrated logits ``s_pos`` (positives' bins) and ``s_neg``."""
    return float(-(pos * log_expit(s_pos) + neg * log_expit(-s_neg)).sum() / (pos.sum() + neg.sum()))


def fit_calibration(histogram: Mapping[str, Any], method: Method = "platt") -> dict[str, Any]:
    """Fit the recalibration map on summed per-class logit histograms.

    Returns ``{"method", "a", "b"}`` (Platt; temperature gives ``a = 1/T``, ``b = 0`` and
    ``"temperature": T``) plus ``"nll_before"``/``"nll_after"`` (nats per study, on the histograms).
    """
    pos, neg, zp, zn = _binned(histogram)
    total = pos.sum() + neg.sum()
    if method == "platt":
        def loss(theta: np.ndarray) -> float:
            return _nll(theta[0] * zp + theta[1], theta[0] * zn + theta[1], pos, neg)

        def grad(theta: np.ndarray) -> np.ndarray:
            rp = pos * (expit(theta[0] * zp + theta[1]) - 1)  # d NLL / d s, positives
            rn = neg * expit(theta[0] * zn + theta[1])  # ... negatives
            return np.array([(rp * zp).sum() + (rn * zn).sum(), rp.sum() + rn.sum()]) / total

        res = minimize(loss, np.array([1.0, 0.0]), jac=grad, method="BFGS", options={"gtol": 1e-10})
        a, b = float(res.x[0]), float(res.x[1])
        if not a > 0:
            raise ValueError(f"Platt slope {a:.3g} <= 0: the scores do not rank positives above negatives")
        if a > MAX_SLOPE or abs(b) > MAX_SLOPE:
            # binned data whose classes do not overlap (e.g. few k-merged groups) have no finite fit:
            # the optimiser walks off towards a step function that no test split would bear out
            raise ValueError(f"Platt fit diverged (a = {a:.3g}, b = {b:.3g}): the validation histograms separate "
                             "the classes completely (too few studies per merged bin); no recalibration")
        out: dict[str, Any] = {"method": "platt", "a": a, "b": b}
    elif method == "temperature":
        res = minimize_scalar(lambda log_t: _nll(zp / math.exp(log_t), zn / math.exp(log_t), pos, neg),
                              bounds=(-5.0, 5.0),
                              method="bounded", options={"xatol": 1e-8})
        t = math.exp(float(res.x))
        out = {"method": "temperature", "temperature": t, "a": 1.0 / t, "b": 0.0}
    else:
        raise ValueError(f"unknown recalibration method {method!r} (platt, temperature)")
    out["nll_before"] = _nll(zp, zn, pos, neg)
    out["nll_after"] = _nll(out["a"] * zp + out["b"], out["a"] * zn + out["b"], pos, neg)
    return out


def apply_calibration(prob, calibration: Mapping[str, Any] | None) -> np.ndarray:
    """Recalibrated probabilities ``sigmoid(a logit(p) + b)``; identity when ``calibration`` is None."""
    p = np.asarray(prob, dtype=np.float64)
    if not calibration:
        return p
    z = np.log(np.clip(p, _EPS, 1)) - np.log(np.clip(1 - p, _EPS, 1))
    return expit(float(calibration["a"]) * z + float(calibration["b"]))


def calibrate_threshold(threshold: float, calibration: Mapping[str, Any] | None) -> float:
    """The same operating point on the recalibrated scale (``score >= t`` iff ``calibrated >= t'``)."""
    return float(apply_calibration(np.array([threshold]), calibration)[0])


def calibration_in_the_large(labels, prob) -> float:
    """Observed event rate minus mean predicted probability (0 when calibrated in the large)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    return float(y.mean() - p.mean()) if y.size else float("nan")


def calibration_summary(labels, prob, calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One site's calibration aggregates on its test split, before and (with a map) after.

    Returns ``{"n", "observed_rate", "before": {"mean_predicted", "citl", "ece", "brier"},
    "after": {...}}`` (``"after"`` only with ``calibration``); ECE on 10 equal-width bins.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()

    def block(q: np.ndarray) -> dict[str, float]:
        return {"mean_predicted": float(q.mean()), "citl": calibration_in_the_large(y, q),
                "ece": expected_calibration_error(y, q), "brier": float(((q - y) ** 2).mean())}

    out: dict[str, Any] = {"n": int(y.size), "observed_rate": float(y.mean()) if y.size else float("nan")}
    if y.size:
        out["before"] = block(p)
        if calibration:
            out["after"] = block(apply_calibration(p, calibration))
    return out


def histogram_calibration_metrics(histogram: Mapping[str, Any], calibration: Mapping[str, Any] | None = None,
                                  *, n_bins: int = 10) -> dict[str, float]:
    """Pooled ECE (``n_bins`` equal-width probability bins) and Brier score from summed logit
    histograms, each bin's studies at its centre, before or after ``calibration``.

    Returns ``{"n", "ece", "brier"}``. An approximation of the same metrics on the pooled scores
    (exact up to the 0.05-logit binning).
    """
    pos, neg, zp, zn = _binned(histogram)
    if calibration:
        a, b = float(calibration["a"]), float(calibration["b"])
        zp, zn = a * zp + b, a * zn + b
    # one point per (bin, class): its studies, their predicted probability, and how many are positive
    q = np.concatenate([expit(zp), expit(zn)])
    count = np.concatenate([pos, neg])
    events = np.concatenate([pos, np.zeros_like(neg)])
    n = count.sum()
    idx = np.clip((q * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for k in range(n_bins):
        sel = idx == k
        cnt = count[sel].sum()
        if cnt > 0:
            ece += abs((q[sel] * count[sel]).sum() - events[sel].sum()) / n
    brier = float((pos * (1 - expit(zp)) ** 2 + neg * expit(zn) ** 2).sum() / n)
    return {"n": float(n), "ece": float(ece), "brier": brier}


def recalibrate_from_payloads(total: Mapping[str, Any], method: Method = "platt") -> dict[str, Any]:
    """Server side in one call, from :func:`~ai4hi_sdk.validation.operating_point.sum_histograms`'s
    result: the fitted map and the pooled validation ECE and Brier before and after it."""
    fit = fit_calibration(total["calibration"], method)
    return {**fit, "sites": list(total.get("sites", [])), "split": "validation",
            "before": histogram_calibration_metrics(total["calibration"]),
            "after": histogram_calibration_metrics(total["calibration"], fit)}

"""Federated recalibration from the sites' logit histograms vs a central fit on the pooled raw
scores (scikit-learn's unpenalised logistic regression as the reference); ECE before/after."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from ai4hi_sdk.validation.calibration import (
    apply_calibration,
    calibrate_threshold,
    calibration_summary,
    fit_calibration,
    histogram_calibration_metrics,
    recalibrate_from_payloads,
)
from ai4hi_sdk.validation.classification import expected_calibration_error
from ai4hi_sdk.validation.operating_point import operating_point_payload, sum_histograms
from ai4hi_sdk.validation.site_report import flatten_metrics, unflatten_metrics


def _low_for_everyone(seed: int, k: int | None):
    """The issue's c1: ranks well (AUROC ~0.98) but predicts about 0.3 for everyone at 50 % prevalence."""
    rng = np.random.default_rng(seed)
    payloads, scores, labels = {}, [], []
    for s in range(3):
        n = 300
        y = rng.integers(0, 2, n)
        p = 1 / (1 + np.exp(-(np.log(0.3 / 0.7) + 0.25 * (rng.normal(size=n) + 1.5 * (2 * y - 1)))))
        payloads[s] = unflatten_metrics(flatten_metrics(operating_point_payload(p, y, split="validation",
                                                                                min_count=k)))
        scores.append(p)
        labels.append(y)
    return sum_histograms({str(s): v for s, v in payloads.items()}), np.concatenate(scores), np.concatenate(labels)


def _central_platt(p, y):
    z = np.log(p / (1 - p))[:, None]
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(z, y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


@pytest.mark.parametrize("seed", range(3))
def test_platt_from_exact_histograms_is_the_central_fit(seed):
    total, p, y = _low_for_everyone(seed, None)
    fit = recalibrate_from_payloads(total, "platt")
    a, b = _central_platt(p, y)
    assert fit["a"] == pytest.approx(a, rel=0.01) and fit["b"] == pytest.approx(b, rel=0.01)
    before, after = expected_calibration_error(y, p), expected_calibration_error(y, apply_calibration(p, fit))
    assert before > 0.3 and after < 0.05  # recalibration removes almost all of the miscalibration
    # the pooled estimate from the histograms says the same
    assert fit["before"]["ece"] == pytest.approx(before, abs=0.02) and fit["after"]["ece"] < 0.05
    assert fit["nll_after"] < fit["nll_before"] and fit["split"] == "validation"


@pytest.mark.parametrize("seed", range(3))
def test_platt_from_k_merged_histograms_still_recalibrates(seed):
    total, p, y = _low_for_everyone(seed, 10)
    fit = recalibrate_from_payloads(total, "platt")
    a, b = _central_platt(p, y)
    assert fit["a"] == pytest.approx(a, rel=0.15) and fit["b"] == pytest.approx(b, rel=0.15)
    central_ece = expected_calibration_error(y, apply_calibration(p, {"a": a, "b": b}))
    assert expected_calibration_error(y, apply_calibration(p, fit)) < max(0.04, 1.5 * central_ece)


def test_temperature_fixes_overconfidence_but_not_an_offset():
    rng = np.random.default_rng(3)
    n = 3000
    y = rng.integers(0, 2, n)
    z_true = 1.6 * (rng.normal(size=n) + 0.8 * (2 * y - 1))  # calibrated logits of N(+-0.8, 1)...
    p = 1 / (1 + np.exp(-3.0 * z_true))  # ... made three times too confident
    total = sum_histograms({"A": operating_point_payload(p, y, split="validation", min_count=None)})
    fit = fit_calibration(total["calibration"], "temperature")
    z = np.log(p / (1 - p))
    central = minimize_scalar(lambda t: np.mean(np.logaddexp(0, -(2 * y - 1) * z / t)), bounds=(0.1, 20),
                              method="bounded", options={"xatol": 1e-8}).x
    assert fit["temperature"] == pytest.approx(central, rel=0.01) and fit["temperature"] == pytest.approx(3.0, rel=0.1)
    assert expected_calibration_error(y, apply_calibration(p, fit)) < 0.5 * expected_calibration_error(y, p)
    # an offset (the ~0.3-for-everyone model) is beyond a temperature: Platt is the default for that
    offset, q, yy = _low_for_everyone(0, None)
    t_fit = fit_calibration(offset["calibration"], "temperature")
    assert expected_calibration_error(yy, apply_calibration(q, t_fit)) > 0.3


def test_site_summary_before_after_and_calibration_in_the_large():
    total, p, y = _low_for_everyone(1, None)
    fit = fit_calibration(total["calibration"])
    summary = calibration_summary(y, p, fit)
    assert summary["observed_rate"] == pytest.approx(y.mean())
    assert summary["before"]["citl"] == pytest.approx(y.mean() - p.mean())  # under-predicts by ~0.2
    assert summary["before"]["citl"] > 0.15 and abs(summary["after"]["citl"]) < 0.02
    q = apply_calibration(p, fit)
    assert summary["after"]["brier"] == pytest.approx(np.mean((q - y) ** 2))
    assert summary["after"]["ece"] == pytest.approx(expected_calibration_error(y, q))
    assert "after" not in calibration_summary(y, p)


def test_threshold_moves_with_the_map_and_histogram_metrics_match_the_raw_ones():
    total, p, y = _low_for_everyone(2, None)
    fit = fit_calibration(total["calibration"])
    t = 0.3
    t2 = calibrate_threshold(t, fit)
    assert np.array_equal(p >= t, apply_calibration(p, fit) >= t2)
    h = histogram_calibration_metrics(total["calibration"])
    assert h["n"] == y.size and h["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=0.002)


def test_a_model_that_ranks_backwards_is_refused():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = 1 / (1 + np.exp(-(rng.normal(size=400) - 1.5 * (2 * y - 1))))
    total = sum_histograms({"A": operating_point_payload(p, y, split="validation", min_count=None)})
    with pytest.raises(ValueError, match="the scores do not rank positives above negatives"):
        fit_calibration(total["calibration"])

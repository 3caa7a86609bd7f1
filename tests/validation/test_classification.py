import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import brier_score_loss, roc_auc_score

from ai4hi_sdk.validation.classification import (
    classification_report,
    delong_auc_cov,
    expected_calibration_error,
    paired_auroc_difference,
)


def _fast_auc(y, s):
    r = rankdata(s)
    m = y.sum()
    return (r[y == 1].sum() - m * (m + 1) / 2) / (m * (y.size - m))


def _data(n=300, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + signal * y
    return y, 1 / (1 + np.exp(-s))


def test_report_matches_sklearn():
    y, p = _data()
    r = classification_report(y, p)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert r["brier"] == pytest.approx(brier_score_loss(y, p))
    assert r["n"] == 300 and r["positives"] == int(y.sum())
    assert r["sensitivity"] == pytest.approx(((p >= 0.5) & (y == 1)).sum() / y.sum())
    assert r["specificity"] == pytest.approx(((p < 0.5) & (y == 0)).sum() / (y == 0).sum())
    lo, hi = r["auroc_ci"]
    assert lo < r["auroc"] < hi


def test_delong_auc_equals_sklearn_with_ties():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    p = np.array([0.1, 0.4, 0.4, 0.8, 0.4, 0.9, 0.1, 0.2])
    aucs, _ = delong_auc_cov(y, p[None])
    assert aucs[0] == pytest.approx(roc_auc_score(y, p))


def test_delong_variance_agrees_with_bootstrap():
    y, p = _data(n=400, seed=1)
    aucs, cov = delong_auc_cov(y, p[None])
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boot = []
    for _ in range(1000):  # stratified bootstrap
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        boot.append(_fast_auc(y[idx], p[idx]))
    assert np.sqrt(cov[0, 0]) == pytest.approx(np.std(boot), rel=0.15)
    r = classification_report(y, p)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert r["auroc_ci"][0] == pytest.approx(lo, abs=0.015)
    assert r["auroc_ci"][1] == pytest.approx(hi, abs=0.015)


def test_paired_difference_against_bootstrap():
    rng = np.random.default_rng(2)
    n = 400
    y = rng.integers(0, 2, n)
    common = rng.normal(size=n)
    champ = common + 0.8 * y + 0.5 * rng.normal(size=n)
    cand = common + 1.1 * y + 0.5 * rng.normal(size=n)
    d = paired_auroc_difference(y, cand, champ)
    assert d["delta"] == pytest.approx(roc_auc_score(y, cand) - roc_auc_score(y, champ))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boot = []
    for _ in range(1000):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        boot.append(_fast_auc(y[idx], cand[idx]) - _fast_auc(y[idx], champ[idx]))
    assert np.sqrt(d["variance"]) == pytest.approx(np.std(boot), rel=0.15)
    assert d["ci"][0] < d["delta"] < d["ci"][1]
    # identical models: zero difference, zero variance
    same = paired_auroc_difference(y, champ, champ)
    assert same["delta"] == 0 and same["variance"] == pytest.approx(0, abs=1e-15)


def test_ece_hand_computed():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 0.85])
    # one example per bin (0, 1, 9, 8): |.05-0| + |.15-1| + |.95-1| + |.85-0|, each weighted 1/4
    assert expected_calibration_error(y, p) == pytest.approx((0.05 + 0.85 + 0.05 + 0.85) / 4)
    y2, p2 = np.array([0, 1]), np.array([0.02, 0.08])  # same bin: |.05 - .5|
    assert expected_calibration_error(y2, p2) == pytest.approx(0.45)


def test_one_class_has_no_auroc():
    r = classification_report(np.ones(5), np.linspace(0.1, 0.9, 5))
    assert np.isnan(r["auroc"]) and r["auroc_ci"] is None and r["n"] == 5


def test_bootstrap_ci_option_agrees_with_delong():
    y, p = _data(n=400, seed=1)
    d = classification_report(y, p)
    b = classification_report(y, p, ci_method="bootstrap", n_bootstrap=500, seed=3)
    assert b["ci_method"] == "stratified-bootstrap" and d["ci_method"] == "delong-logit"
    assert b["auroc"] == d["auroc"]
    assert b["auroc_ci"][0] == pytest.approx(d["auroc_ci"][0], abs=0.015)
    assert b["auroc_ci"][1] == pytest.approx(d["auroc_ci"][1], abs=0.015)
    assert b == classification_report(y, p, ci_method="bootstrap", n_bootstrap=500, seed=3)

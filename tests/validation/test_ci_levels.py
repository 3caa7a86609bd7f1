"""The confidence levels decisions rest on are pinned: 95 %, checked against intervals built here
from first principles (DeLong's structural components by brute force, z = 1.959963984540054).
Switching the AUROC interval, the paired-difference interval or the pooled interval to 90 % fails
these tests; the paired interval's lower bound is what REPLACE decides on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ai4hi_sdk.validation.classification import classification_report, paired_auroc_difference
from ai4hi_sdk.validation.decision import decide
from ai4hi_sdk.validation.engine import evidence_from_validation
from ai4hi_sdk.validation.meta_analysis import random_effects
from ai4hi_sdk.validation.site_report import flatten_metrics, site_validation_report, unflatten_metrics
from ai4hi_sdk.validation.update_policy import UpdatePolicy

Z95 = 1.959963984540054


def _components(y, s):
    """DeLong's structural components of one score vector: V10 per positive, V01 per negative."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(1), psi.mean(0)


def _delong_var(y, a, b=None):
    """Var(AUC_a) or, with ``b``, Var(AUC_a - AUC_b), straight from the definitions."""
    va10, va01 = _components(y, a)
    if b is None:
        return va10.var(ddof=1) / va10.size + va01.var(ddof=1) / va01.size
    vb10, vb01 = _components(y, b)
    d10, d01 = va10 - vb10, va01 - vb01
    return d10.var(ddof=1) / d10.size + d01.var(ddof=1) / d01.size


def _data(seed, n=240):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=n)
    champ = 1 / (1 + np.exp(-(x + 0.8 * (2 * y - 1))))
    cand = 1 / (1 + np.exp(-(0.7 * x + rng.normal(size=n) * 0.5 + 1.0 * (2 * y - 1))))
    return y, cand, champ


@pytest.mark.parametrize("seed", range(3))
def test_auroc_interval_is_95_percent_delong_on_the_logit_scale(seed):
    y, cand, _ = _data(seed)
    rep = classification_report(y, cand)
    auc = _components(y, cand)[0].mean()
    var = _delong_var(y, cand)
    se = math.sqrt(var) / (auc * (1 - auc))
    logit = math.log(auc / (1 - auc))
    expected = [1 / (1 + math.exp(-(logit - Z95 * se))), 1 / (1 + math.exp(-(logit + Z95 * se)))]
    assert rep["ci"] == 0.95 and rep["auroc"] == pytest.approx(auc)
    assert rep["auroc_var"] == pytest.approx(var, rel=1e-9)
    assert rep["auroc_ci"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_paired_difference_interval_is_95_percent(seed):
    y, cand, champ = _data(seed)
    paired = paired_auroc_difference(y, cand, champ)
    var = _delong_var(y, cand, champ)
    delta = _components(y, cand)[0].mean() - _components(y, champ)[0].mean()
    assert paired["variance"] == pytest.approx(var, rel=1e-9)
    assert paired["ci"] == pytest.approx([delta - Z95 * math.sqrt(var), delta + Z95 * math.sqrt(var)], abs=1e-9)
    site = site_validation_report(y, cand, champ, {})  # the site's defaults are the same
    assert site["meta"]["ci"] == 0.95 and site["paired"]["ci"] == pytest.approx(paired["ci"])
    assert site["candidate"]["auroc_ci"] == pytest.approx(classification_report(y, cand)["auroc_ci"])


def test_the_95_percent_lower_bound_decides_replace():
    """A policy bound between the 90 % and the 95 % lower bound: at 95 % the candidate is kept; a
    90 % interval would have replaced the champion."""
    y, cand, champ = _data(11, n=400)
    rep = unflatten_metrics(flatten_metrics(site_validation_report(y, cand, champ, {}, threshold=0.4,
                                                                   champion_threshold=0.4)))
    delta, var = rep["paired"]["delta"], rep["paired"]["variance"]
    bound = delta - 1.8 * math.sqrt(var)  # 90 % lower bound: delta - 1.645 se > bound > 95 %: delta - 1.96 se
    policy = UpdatePolicy.model_validate({"replace_if": {"min_site_support": 30, "auroc_delta_lower_bound_gt": bound,
                                                         "max_subgroup_gap_widening": None},
                                          "retrain_if": {"drift_alarm": False, "auroc_below": None},
                                          "safety_floors": {"max_subgroup_sensitivity_gap": None}})
    ev, _ = evidence_from_validation({"validation": {"A": rep}})
    d = decide(ev, policy)
    assert d.decision == "keep"
    failed = [r.rule for r in d.rules if not r.passed and r.rule.split(".")[0] in ("replace_if", "safety_floor")]
    assert failed == ["replace_if.auroc_delta_lower_bound_gt"]
    # the same evidence with the bound just below the 95 % lower bound replaces
    lower = UpdatePolicy.model_validate({**policy.model_dump(), "replace_if": {
        **policy.replace_if.model_dump(), "auroc_delta_lower_bound_gt": delta - 2.0 * math.sqrt(var)}})
    assert decide(ev, lower).decision == "replace"


def test_pooled_interval_is_95_percent():
    effects, variances = [0.03, 0.05, 0.01], [0.0004, 0.0009, 0.0002]
    pooled = random_effects(effects, variances)
    assert pooled["ci"] == pytest.approx([pooled["estimate"] - Z95 * pooled["se"],
                                          pooled["estimate"] + Z95 * pooled["se"]], abs=1e-12)
    w = 1 / np.asarray(variances)
    fixed = (w * effects).sum() / w.sum()
    q = (w * (np.asarray(effects) - fixed) ** 2).sum()
    tau2 = max(0.0, (q - 2) / (w.sum() - (w**2).sum() / w.sum()))
    wr = 1 / (np.asarray(variances) + tau2)
    assert pooled["se"] == pytest.approx(math.sqrt(1 / wr.sum()))

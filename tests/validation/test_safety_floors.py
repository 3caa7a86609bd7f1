"""Safety floors at the operating point: a candidate below any floor is never REPLACE (the rule is
named); a deployed model below one on new data triggers RETRAIN or ROLLBACK; binomial intervals
checked against their textbook formulas; version-1 evidence still read (and fails closed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta

from ai4hi_sdk.validation.decision import FORMAT_VERSION, Evidence, decide
from ai4hi_sdk.validation.engine import evidence_from_validation
from ai4hi_sdk.validation.safety import binomial_interval
from ai4hi_sdk.validation.site_report import flatten_metrics, site_validation_report, unflatten_metrics
from ai4hi_sdk.validation.update_policy import UpdatePolicy, load_update_policy

from .test_decision import site

SHIPPED = Path(__file__).parents[2] / "jobs" / "update_policy.yaml"
Z95 = 1.959963984540054  # standard normal 97.5 % quantile, written out so a changed level cannot hide


def rule(d, name):
    return next(r for r in d.rules if r.rule == name)


def wilson(k, n, z=Z95):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (27, 30), (45, 50), (100, 100), (161, 200)])
def test_binomial_intervals_match_their_formulas(k, n):
    assert binomial_interval(k, n) == pytest.approx(wilson(k, n), abs=1e-9)  # default: 95 % Wilson
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    assert binomial_interval(k, n, method="clopper-pearson") == pytest.approx((lo, hi), abs=1e-9)
    assert binomial_interval(k, n, ci=0.9) == pytest.approx(wilson(k, n, 1.6448536269514722), abs=1e-9)


def test_default_floors_use_95_percent_wilson_lower_bounds():
    d = decide({"sites": [site("A", ccounts=(40, 50, 40, 50))]}, UpdatePolicy())
    values = rule(d, "safety_floor.sensitivity").values
    assert values["A"]["lower_bound"] == pytest.approx(wilson(40, 50)[0], abs=1e-9)
    assert values["pooled"]["lower_bound"] == pytest.approx(wilson(40, 50)[0], abs=1e-9)


def test_candidate_with_higher_auroc_but_low_sensitivity_is_kept_out():
    """The acceptance case, from raw predictions: the candidate ranks far better (AUROC ~0.99 vs
    ~0.89) but at its recorded threshold of 0.5 it calls almost nobody positive. The deployed
    champion (calibrated, threshold 0.3) meets every floor, so it stays: KEEP."""
    rng = np.random.default_rng(7)
    sites = {}
    for i, name in enumerate(("A", "B", "C")):
        n = 200
        y = rng.integers(0, 2, n)
        champ = 1 / (1 + np.exp(-1.8 * (rng.normal(size=n) + 0.9 * (2 * y - 1))))  # calibrated by construction
        # ranks well, predicts about 0.3 for everyone (the issue's c1)
        cand = 1 / (1 + np.exp(-(np.log(0.3 / 0.7) + 0.25 * (rng.normal(size=n) + 2.0 * (2 * y - 1)))))
        rep = site_validation_report(y, cand, champ, {"sex": rng.choice(["F", "M"], n).tolist()},
                                     threshold=0.5, champion_threshold=0.3)
        sites[name] = unflatten_metrics(flatten_metrics(rep))
        assert rep["candidate"]["auroc"] > rep["champion"]["auroc"] + 0.05 and rep["paired"]["ci"][0] > 0.03
        assert rep["candidate"]["sensitivity"] < 0.2
    op = {"threshold": 0.5, "target": "fixed", "split": "validation"}
    ev, _ = evidence_from_validation({"validation": sites}, candidate_operating_point=op)
    assert ev.candidate_operating_point == op and ev.sites[0].candidate_threshold == 0.5
    assert ev.sites[0].champion_threshold == 0.3
    d = decide(ev, load_update_policy(SHIPPED))
    assert d.decision == "keep"
    assert rule(d, "replace_if.auroc_delta_lower_bound_gt").passed
    assert rule(d, "replace_if.pooled_delta_lower_bound_gt").passed
    sens = rule(d, "safety_floor.sensitivity")
    assert not sens.passed and sens.detail.startswith("candidate below the floor at A, B, C, pooled")
    assert all(sens.values[s]["passed"] is False for s in ("A", "B", "C", "pooled"))
    assert not rule(d, "safety_floor.max_ece").passed  # it predicts ~0.3 for a 50 % prevalence
    assert any(r.startswith("safety_floor.sensitivity failed: candidate below the floor") for r in d.reasons)
    assert all(r.passed for r in d.rules if r.rule.startswith("deployed_safety_floor"))


@pytest.mark.parametrize("floor,kwargs", [
    ("safety_floor.sensitivity", {"ccounts": (35, 50, 45, 50)}),  # 0.70 < min 0.80
    ("safety_floor.specificity", {"ccounts": (48, 50, 20, 50)}),  # 0.40 < min 0.50
    ("safety_floor.max_subgroup_sensitivity_gap", {"csgap": 0.31}),
    ("safety_floor.max_ece", {"cece": 0.21}),
])
def test_each_floor_alone_blocks_a_candidate_that_passes_every_replace_rule(floor, kwargs):
    good = decide({"sites": [site("A"), site("B")]}, UpdatePolicy())
    assert good.decision == "replace"
    d = decide({"sites": [site("A"), site("B", **kwargs)]}, UpdatePolicy())
    assert d.decision == "keep"
    failed = [r.rule for r in d.rules if not r.passed and r.rule.split(".")[0] in ("replace_if", "safety_floor")]
    assert failed == [floor] and "B" in rule(d, floor).detail
    assert any(r.startswith(f"{floor} failed: candidate") for r in d.reasons)


def test_pooled_lower_bound_can_fail_where_every_site_passes():
    # 24/30 at each site: Wilson 95 % lower bound 0.627 >= 0.60 per site; pooled 48/60: 0.680 < 0.70
    d = decide({"sites": [site("A", ccounts=(24, 30, 40, 50)), site("B", ccounts=(24, 30, 40, 50))]}, UpdatePolicy())
    sens = rule(d, "safety_floor.sensitivity")
    assert d.decision == "keep" and not sens.passed
    assert sens.values["A"]["passed"] and sens.values["B"]["passed"] and sens.values["pooled"]["passed"] is False
    assert sens.values["pooled"]["lower_bound"] == pytest.approx(wilson(48, 60)[0])
    relaxed = UpdatePolicy.model_validate({"safety_floors": {"sensitivity": {"min": 0.8, "lower_bound_min": 0.6,
                                                                             "pooled_lower_bound_min": 0.65}}})
    assert decide({"sites": [site("A", ccounts=(24, 30, 40, 50)), site("B", ccounts=(24, 30, 40, 50))]},
                  relaxed).decision == "replace"


def test_small_sites_count_in_the_pooled_floor_only():
    # the tiny site (n=12 < 30) is excluded from per-site rules but its 0/6 positives found pull the pool down
    sites = [site("A", ccounts=(40, 50, 40, 50)), site("tiny", n=12, ccounts=(0, 6, 6, 6))]
    d = decide({"sites": sites}, UpdatePolicy.model_validate({"replace_if": {"min_site_support": 30}}))
    sens = rule(d, "safety_floor.sensitivity")
    assert sens.values["tiny"]["passed"] is None and sens.values["pooled"]["n"] == 56
    assert sens.values["pooled"]["value"] == pytest.approx(40 / 56) and d.decision == "keep"


def test_deployed_model_below_a_floor_triggers_retrain_or_rollback():
    # the candidate is no better (keep), and the deployed champion now misses positives at its threshold
    sites = [site("A", lo=-0.05, pcounts=(30, 50, 45, 50)), site("B", lo=-0.05)]
    d = decide({"sites": sites}, UpdatePolicy())
    assert d.decision == "retrain"
    fired = rule(d, "retrain_if.deployed_below_safety_floor")
    assert fired.passed and fired.detail == "the deployed model is below deployed_safety_floor.sensitivity at A, pooled"
    assert any(r.startswith("retrain_if.deployed_below_safety_floor fired") for r in d.reasons)
    roll = UpdatePolicy.model_validate({"safety_floors": {"on_deployed_below_floor": "rollback"}})
    d = decide({"sites": sites}, roll)
    assert d.decision == "rollback" and rule(d, "rollback_if.deployed_below_safety_floor").passed
    # the same champion above its floors: keep
    assert decide({"sites": [site("A", lo=-0.05), site("B", lo=-0.05)]}, roll).decision == "keep"


def test_a_safe_candidate_replaces_an_unsafe_champion():
    d = decide({"sites": [site("A", pcounts=(10, 50, 45, 50)), site("B", pcounts=(10, 50, 45, 50))]}, UpdatePolicy())
    assert d.decision == "replace"  # the candidate fixes it; no retrain needed
    assert not any(r.rule.startswith("deployed_safety_floor") for r in d.rules)


def test_format_1_evidence_is_read_and_fails_closed():
    old = {"sites": [{"site": "A", "n": 100, "candidate_auroc": 0.9, "champion_auroc": 0.8, "auroc_delta": 0.1,
                      "auroc_delta_ci": [0.05, 0.15], "auroc_delta_variance": 0.0006}]}
    ev = Evidence.model_validate(old)
    assert ev.format_version == 1 and ev.sites[0].candidate_score == 0.9 and ev.sites[0].score_delta_ci == (0.05, 0.15)
    d = decide(ev, UpdatePolicy())
    assert d.decision == "keep" and d.format_version == FORMAT_VERSION
    assert "A: no operating-point counts" in rule(d, "safety_floor.sensitivity").detail
    # the deployed model's missing counts are said, not held against it
    assert rule(d, "deployed_safety_floor.sensitivity").passed
    assert not rule(d, "retrain_if.deployed_below_safety_floor").passed
    assert Evidence.model_validate(ev.model_dump(mode="json")).format_version == 1  # a round trip keeps the version
    assert Evidence.model_validate({"sites": [site("A")]}).format_version == FORMAT_VERSION


def test_segmentation_evidence_is_not_blocked_by_classification_floors():
    dice = {**site("A"), "metric": "dice", "candidate_counts": None, "champion_counts": None, "candidate_ece": None,
            "champion_ece": None, "candidate_sensitivity_gap": None, "champion_sensitivity_gap": None}
    d = decide({"sites": [dice]}, UpdatePolicy.model_validate({"retrain_if": {"auroc_below": 0.5}}))
    assert d.decision == "replace"
    assert "not applicable: segmentation evidence (Dice) at A" in rule(d, "safety_floor.sensitivity").detail


def test_a_floor_switched_off_is_not_evaluated():
    pol = UpdatePolicy.model_validate({"safety_floors": {"max_ece": None}})
    d = decide({"sites": [site("A", cece=0.4), site("B", cece=0.4)]}, pol)
    assert d.decision == "replace" and not any(r.rule == "safety_floor.max_ece" for r in d.rules)

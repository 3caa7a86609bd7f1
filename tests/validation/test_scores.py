"""What an evidence score is and which way is better: the decision engine refuses a score it does not
know (fail closed), and for a lower-is-better score it requires the candidate to lower it, per site,
pooled and against the retrain limit. The texts of the AUROC and Dice decisions are unchanged."""

from __future__ import annotations

import pytest

from ai4hi_sdk.validation.decision import decide
from ai4hi_sdk.validation.scores import AUROC, DICE, ScoreMetric, register_score_metric, score_metric
from ai4hi_sdk.validation.update_policy import UpdatePolicy

ERROR = ScoreMetric("abs_error", "abs error", "estimation", higher_is_better=False)
POLICY = UpdatePolicy.model_validate({"replace_if": {"min_site_support": 10, "auroc_delta_lower_bound_gt": 0.0,
                                                     "pooled_delta_lower_bound_gt": 0.0},
                                      "retrain_if": {"auroc_below": None}})


@pytest.fixture(autouse=True)
def error_metric(monkeypatch):
    from ai4hi_sdk.validation import scores

    monkeypatch.setattr(scores, "_METRICS", dict(scores._METRICS))
    register_score_metric(ERROR)


def site(name, metric="abs_error", cand=1.0, champ=2.0, lo=-1.4, hi=-0.6, var=0.04):
    return {"site": name, "n": 50, "metric": metric, "candidate_score": cand, "champion_score": champ,
            "score_delta": cand - champ, "score_delta_ci": [lo, hi], "score_delta_variance": var}


def rule(d, name):
    return next(r for r in d.rules if r.rule == name)


def test_the_built_in_scores():
    assert score_metric("auroc") == AUROC and AUROC.operating_point and AUROC.higher_is_better
    assert score_metric("dice") == DICE and not DICE.operating_point
    assert ERROR.improvement(-0.5) == 0.5 and AUROC.improvement(-0.5) == -0.5
    assert ERROR.worse_than(2.0, 1.5) and not AUROC.worse_than(2.0, 1.5)


def test_evidence_with_an_unknown_score_is_not_decided_on():
    with pytest.raises(ValueError, match="'brightness' is not registered"):
        decide({"sites": [site("A", metric="brightness")]}, POLICY)


def test_a_lower_error_is_an_improvement_per_site_and_pooled():
    d = decide({"sites": [site("A"), site("B")]}, POLICY)
    assert d.decision == "replace", d.reasons
    assert "A: upper bound -0.6000" in rule(d, "replace_if.auroc_delta_lower_bound_gt").detail
    assert "(must be < 0.0)" in rule(d, "replace_if.auroc_delta_lower_bound_gt").detail
    assert "upper bound" in rule(d, "replace_if.pooled_delta_lower_bound_gt").detail
    assert d.pooled["estimate"] == pytest.approx(-1.0)  # the change itself, candidate minus champion


def test_a_higher_error_is_not_an_improvement():
    """The cheating candidate: its error is larger, so its score and the change are larger; an engine
    reading every score as higher-is-better would deploy it."""
    worse = [site("A", cand=2.0, champ=1.0, lo=0.6, hi=1.4), site("B", cand=2.0, champ=1.0, lo=0.6, hi=1.4)]
    d = decide({"sites": worse}, POLICY)
    assert d.decision == "keep"
    assert not rule(d, "replace_if.auroc_delta_lower_bound_gt").passed
    assert not rule(d, "replace_if.pooled_delta_lower_bound_gt").passed
    # an interval straddling 0 is not enough either
    assert decide({"sites": [site("A", lo=-0.5, hi=0.1)]}, POLICY).decision == "keep"


def test_the_retrain_limit_is_a_ceiling_for_an_error():
    policy = POLICY.model_copy(update={"retrain_if": POLICY.retrain_if.model_copy(update={"auroc_below": 0.5})})
    d = decide({"sites": [site("A")]}, policy)
    assert rule(d, "retrain_if.auroc_below").passed and "(ceiling 0.5)" in rule(d, "retrain_if.auroc_below").detail
    assert d.decision == "retrain"
    ok = decide({"sites": [site("A", cand=0.4, champ=1.4)]}, policy)
    assert not rule(ok, "retrain_if.auroc_below").passed and ok.decision == "replace"


def test_scores_that_improve_in_opposite_directions_are_not_pooled():
    dice = site("B", metric="dice", cand=0.8, champ=0.7, lo=0.05, hi=0.15, var=0.001)
    d = decide({"sites": [site("A"), dice]}, POLICY)
    assert not rule(d, "replace_if.pooled_delta_lower_bound_gt").passed
    assert "opposite directions" in rule(d, "replace_if.pooled_delta_lower_bound_gt").detail
    # each site's own rule still reads its own direction
    assert rule(d, "replace_if.auroc_delta_lower_bound_gt").passed


def test_the_texts_of_auroc_and_dice_decisions_are_unchanged():
    auroc = decide({"sites": [site("A", metric="auroc", cand=0.85, champ=0.8, lo=0.01, hi=0.09)]},
                   UpdatePolicy.model_validate({"replace_if": {"min_site_support": 10}}))
    assert rule(auroc, "replace_if.auroc_delta_lower_bound_gt").detail == "A: lower bound 0.0100 (must be > -0.01)"
    assert not any(r.startswith("performance metric") for r in auroc.reasons)
    dice = decide({"sites": [site("A", metric="dice", cand=0.85, champ=0.8, lo=0.01, hi=0.09)]}, POLICY)
    assert "performance metric: Dice (the policy's AUROC thresholds apply to it)" in dice.reasons

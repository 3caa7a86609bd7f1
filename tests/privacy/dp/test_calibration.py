"""Noise calibration and the federated planner."""

import math

import pytest
from opacus.accountants.utils import get_noise_multiplier

from ai4hi_sdk.privacy.dp.accountants import InvalidPrivacyParameter, PRVAccountant, RDPAccountant
from ai4hi_sdk.privacy.dp.calibration import noise_multiplier_for_target, plan

DELTA = 1e-5


@pytest.mark.filterwarnings("ignore:Optimal order:UserWarning")
@pytest.mark.parametrize("target, q, steps", [(2.597, 256 / 60000, 14063), (1.0, 0.08192, 875), (8.0, 0.01, 3000)])
def test_rdp_calibration_meets_target_and_agrees_with_opacus(target, q, steps):
    sigma = noise_multiplier_for_target(target, DELTA, q, steps, accountant="rdp")
    epsilon = RDPAccountant([(sigma, q, steps)]).get_epsilon(DELTA)
    assert target - 0.01 <= epsilon <= target
    theirs = get_noise_multiplier(target_epsilon=target, target_delta=DELTA, sample_rate=q, steps=steps)
    assert sigma == pytest.approx(theirs, rel=0.01)


def test_prv_calibration_with_accountant_object():
    acc = PRVAccountant()
    sigma = noise_multiplier_for_target(1.0, DELTA, 0.01, 200, accountant=acc)
    epsilon = acc.projected_epsilon(DELTA, sigma, 0.01, 200)
    assert 0.99 <= epsilon <= 1.0
    assert acc.history == []  # not modified
    # PRV is tighter, so it needs less noise than RDP for the same target
    assert sigma < noise_multiplier_for_target(1.0, DELTA, 0.01, 200, accountant="rdp")


def test_calibration_counts_past_spend():
    past = RDPAccountant([(1.0, 0.02, 500)])
    spent = past.get_epsilon(DELTA)
    sigma = noise_multiplier_for_target(spent + 1.0, DELTA, 0.02, 500, accountant=past)
    assert spent + 0.99 <= past.projected_epsilon(DELTA, sigma, 0.02, 500) <= spent + 1.0
    fresh = noise_multiplier_for_target(spent + 1.0, DELTA, 0.02, 500)
    assert sigma > fresh
    with pytest.raises(InvalidPrivacyParameter, match="already spent"):
        noise_multiplier_for_target(spent * 0.9, DELTA, 0.02, 500, accountant=past)


def test_unreachable_and_invalid_targets():
    with pytest.raises(InvalidPrivacyParameter, match="too small"):
        noise_multiplier_for_target(1e-9, 1e-10, 1.0, 10**6)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(InvalidPrivacyParameter, match="target epsilon"):
            noise_multiplier_for_target(bad, DELTA, 0.1, 10)
    with pytest.raises(InvalidPrivacyParameter, match="steps"):
        noise_multiplier_for_target(1.0, DELTA, 0.1, 0)


def test_plan_rounds_and_epsilons():
    result = plan(dataset_size=60000, batch_size=256, epochs_per_round=2, rounds=5, target_epsilon=3.0, delta=DELTA)
    assert result.sample_rate == 256 / 60000
    assert result.steps_per_round == 2 * math.ceil(60000 / 256) == 470
    assert result.total_steps == 2350 and result.rounds == 5 and result.accountant == "rdp"
    eps = result.epsilon_after_each_round
    assert len(eps) == 5 and all(a < b for a, b in zip(eps, eps[1:]))
    assert 2.99 <= eps[-1] <= 3.0 and result.final_epsilon == eps[-1]
    # independent recomputation, round by round
    acc = RDPAccountant()
    for r in range(5):
        acc.step(result.noise_multiplier, result.sample_rate, result.steps_per_round)
        assert acc.get_epsilon(DELTA) == pytest.approx(eps[r], rel=1e-12)
    assert result.to_dict()["epsilon_after_each_round"] == eps


def test_plan_with_prv_and_past_spend():
    past = PRVAccountant([(2.0, 0.05, 40)])
    result = plan(dataset_size=1000, batch_size=50, epochs_per_round=1, rounds=2, target_epsilon=2.0, delta=DELTA,
                  accountant=past)
    assert result.accountant == "prv" and result.steps_per_round == 20
    assert result.epsilon_before == pytest.approx(past.get_epsilon(DELTA))
    assert result.epsilon_before < result.epsilon_after_each_round[0] < result.epsilon_after_each_round[1] <= 2.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset_size": 0}, "steps must be >= 1"),
        ({"batch_size": 2000}, "must not exceed the dataset size"),
        ({"rounds": 0}, ">= 1"),
        ({"target_epsilon": -1.0}, "target epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"accountant": "moments"}, "unknown accountant"),
    ],
)
def test_plan_rejects_bad_inputs(kwargs, message):
    args = dict(dataset_size=1000, batch_size=50, epochs_per_round=1, rounds=2, target_epsilon=2.0, delta=DELTA)
    args.update(kwargs)
    with pytest.raises(InvalidPrivacyParameter, match=message):
        plan(**args)

"""Accountants: parity with published values and with opacus, composition, JSON state."""

import json
import math

import pytest
from opacus.accountants import PRVAccountant as OpacusPRV
from opacus.accountants import RDPAccountant as OpacusRDP

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.privacy.dp.accountants import (
    accountant_from_dict,
    InvalidPrivacyParameter,
    PRVAccountant,
    RDPAccountant,
    available_accountants,
    create_accountant,
)

MNIST = (1.1, 256 / 60000, 14063)  # Abadi et al. / opacus MNIST example
CIFAR = (10.0, 4096 / 50000, 875)
DELTA = 1e-5


@pytest.mark.parametrize(
    "mechanism, composition, published",
    [
        ("rdp", MNIST, 2.597),
        ("rdp", CIFAR, 0.988),
        ("prv", MNIST, 2.39),
        ("prv", CIFAR, 0.91),
    ],
)
def test_published_settings_within_one_percent(mechanism, composition, published):
    epsilon = create_accountant(mechanism, history=[composition]).get_epsilon(DELTA)
    assert epsilon == pytest.approx(published, rel=0.01)


def _opacus(cls, history):
    acc = cls()
    acc.history = list(history)
    return acc.get_epsilon(DELTA)


def test_rdp_equals_opacus_object_for_object():
    histories = [[MNIST], [CIFAR], [(1.0, 0.01, 300), (1.5, 0.02, 200)], [(0.8, 1.0, 5)]]
    for history in histories:
        ours = RDPAccountant(history=history).get_epsilon(DELTA)
        theirs = _opacus(OpacusRDP, history)
        # our orders are a superset of opacus's: never looser, and here no tighter than 1%
        assert ours <= theirs + 1e-12
        assert ours == pytest.approx(theirs, rel=0.01)
    # with opacus's own orders the numbers are identical
    from ai4hi_sdk.privacy.dp.accountants.rdp import OPACUS_DEFAULT_ORDERS

    history = [(1.0, 0.01, 300), (1.5, 0.02, 200)]
    assert RDPAccountant(history, orders=OPACUS_DEFAULT_ORDERS).get_epsilon(DELTA) == _opacus(OpacusRDP, history)


def test_prv_equals_opacus_object_for_object():
    history = [(1.0, 0.01, 300), (1.5, 0.02, 200)]
    assert PRVAccountant(history=history).get_epsilon(DELTA) == pytest.approx(_opacus(OpacusPRV, history), rel=1e-9)


def test_prv_is_tighter_than_rdp():
    history = [(1.0, 0.01, 300), (1.5, 0.02, 200)]
    assert PRVAccountant(history).get_epsilon(DELTA) < RDPAccountant(history).get_epsilon(DELTA)


def test_step_merges_and_projection_does_not_mutate():
    acc = RDPAccountant()
    assert acc.get_epsilon(DELTA) == 0.0
    acc.step(1.1, 0.01)
    acc.step(1.1, 0.01, steps=9)
    acc.step(2.0, 0.02, steps=5)
    acc.step(1.1, 0.01, steps=10)  # same (sigma, q) again: composition is commutative
    assert acc.history == [(1.1, 0.01, 20), (2.0, 0.02, 5)]
    assert acc.total_steps == 25
    before = acc.get_epsilon(DELTA)
    projected = acc.projected_epsilon(DELTA, 1.1, 0.01, 100)
    assert acc.history == [(1.1, 0.01, 20), (2.0, 0.02, 5)]
    assert acc.get_epsilon(DELTA) == before < projected
    acc.step(1.1, 0.01, 100)
    assert acc.get_epsilon(DELTA) == projected


def test_zero_noise_is_infinite_epsilon():
    acc = RDPAccountant([(1.0, 0.1, 10)])
    assert acc.projected_epsilon(DELTA, 0.0, 0.1, 1) == math.inf
    assert PRVAccountant([(0.0, 0.1, 1)]).get_epsilon(DELTA) == math.inf


@pytest.mark.parametrize("cls", [RDPAccountant, PRVAccountant])
def test_json_round_trip_and_composition_across_jobs(cls):
    job1, job2 = (1.0, 0.02, 150), (1.3, 0.05, 100)
    first = cls()
    first.step(*job1)
    state = json.loads(json.dumps(first.to_dict()))  # persisted at the site between jobs
    assert state["mechanism"] == cls.mechanism
    restored = accountant_from_dict(state)
    assert type(restored) is cls and restored == first
    assert restored.get_epsilon(DELTA) == first.get_epsilon(DELTA)
    restored.step(*job2)  # second job on the same dataset
    together = cls([job1, job2])
    assert restored.get_epsilon(DELTA) == together.get_epsilon(DELTA)
    # step by step (one call per round) composes to the same
    stepwise = cls()
    for _ in range(3):
        stepwise.step(1.0, 0.02, 50)
    stepwise.step(1.3, 0.05, 100)
    assert stepwise.history == together.history


def test_state_params_and_mismatches():
    custom = RDPAccountant([(1.0, 0.1, 3)], orders=[2, 4, 8])
    restored = accountant_from_dict(json.loads(json.dumps(custom.to_dict())))
    assert restored.orders == (2.0, 4.0, 8.0) and restored.get_epsilon(DELTA) == custom.get_epsilon(DELTA)
    with pytest.raises(InvalidPrivacyParameter, match="cannot be loaded"):
        PRVAccountant.from_dict(RDPAccountant().to_dict())
    with pytest.raises(InvalidPrivacyParameter):
        accountant_from_dict({"history": []})
    # a history is mechanism-independent: re-account it with another accountant
    rdp = RDPAccountant([(1.0, 0.1, 30)])
    assert PRVAccountant(history=rdp.history).history == rdp.history


def test_registry():
    assert available_accountants() == ["prv", "rdp"]
    assert isinstance(create_accountant("RDP"), RDPAccountant)
    assert isinstance(create_accountant("prv"), PRVAccountant)
    with pytest.raises(UserError, match="unknown accountant 'gdp'; choose one of: prv, rdp"):
        create_accountant("gdp")


@pytest.mark.parametrize(
    "args, message",
    [
        ((1.0, 0.0, 1), "sample rate"),
        ((1.0, 1.5, 1), "sample rate"),
        ((-0.1, 0.1, 1), "noise multiplier"),
        ((math.nan, 0.1, 1), "noise multiplier"),
        ((1.0, 0.1, -1), "steps"),
        ((1.0, 0.1, 1.5), "steps"),
    ],
)
def test_invalid_parameters(args, message):
    with pytest.raises(InvalidPrivacyParameter, match=message):
        RDPAccountant().step(*args)
    with pytest.raises(ValueError):  # also a ValueError for library callers
        RDPAccountant().projected_epsilon(DELTA, *args)


def test_invalid_delta():
    for delta in (0.0, 1.0, -1e-5):
        with pytest.raises(InvalidPrivacyParameter, match="delta"):
            RDPAccountant([(1.0, 0.1, 1)]).get_epsilon(delta)


def test_corrupt_state_is_a_clear_error():
    for state in [
        {"mechanism": "rdp", "history": [[1.0, 2.0, 3]]},
        {"mechanism": "rdp", "history": [[1.0, 0.1]]},
        {"mechanism": "rdp", "history": [], "params": {"bogus": 1}},
        {"mechanism": "rdp", "history": [], "format": 99},
    ]:
        with pytest.raises(InvalidPrivacyParameter):
            accountant_from_dict(state)

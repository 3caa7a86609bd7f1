"""Noise calibration and privacy planning (pure core).

* :func:`noise_multiplier_for_target`: the smallest noise multiplier (within tolerance) whose
  epsilon after ``steps`` more steps stays <= a target, for any of our accountants, including
  one that already holds a site's past spend (then the target is the *total*).
* :func:`plan`: the federated plan a lead or site admin reads before a job: Poisson sampling rate,
  steps per round, noise multiplier for a target epsilon over the whole job, and epsilon after
  each round (after up to :data:`MAX_LISTED_ROUNDS` rounds; for longer jobs at log-spaced
  rounds, first and last included, so any number of rounds answers in about a second with RDP).
  The PRV accountant's time and memory grow with the number of steps (~1 GB and seconds per call
  at 5e4 steps): :func:`plan` refuses it above :data:`PRV_MAX_STEPS` steps (use RDP there).

The search brackets the root, then refines it by the Illinois variant of regula falsi on
``log epsilon`` vs ``log sigma`` (nearly linear), which needs ~5-10 accountant calls instead of
bisection's ~20 (it matters for the PRV accountant, ~0.1-1 s a call). The returned noise
multiplier always has ``epsilon <= target`` and ``target - epsilon <= epsilon_tolerance``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from ai4hi_sdk.privacy.dp.accountants.base import (
    InvalidPrivacyParameter,
    PrivacyAccountant,
    _number,
    check_delta,
    check_sample_rate,
    check_steps,
)
from ai4hi_sdk.privacy.dp.accountants.rdp import RDPAccountant
from ai4hi_sdk.privacy.dp.accountants.registry import create_accountant

MAX_NOISE_MULTIPLIER = 1e6
MIN_NOISE_MULTIPLIER = 1e-4
#: rounds whose epsilon :func:`plan` lists one by one; above, this many log-spaced rounds (RDP)
MAX_LISTED_ROUNDS = 1000
#: ... and with the PRV accountant, whose every evaluation is a full composition
PRV_LISTED_ROUNDS = 10
#: total steps (past and planned) above which :func:`plan` refuses the PRV accountant
PRV_MAX_STEPS = 25_000


def rounds_to_list(rounds: int, limit: int) -> list[int]:
    """Rounds ``1..rounds`` if at most ``limit``, else about ``limit`` log-spaced ones (1 and ``rounds`` included)."""
    if rounds <= limit:
        return list(range(1, rounds + 1))
    return sorted({1, rounds} | {min(rounds, max(1, round(rounds ** (i / (limit - 1))))) for i in range(limit)})


def _positive(name: str, value: object) -> float:
    value = _number(name, value)
    if not 0 < value < math.inf:
        raise InvalidPrivacyParameter(f"{name} must be a finite number > 0, got {value:g}")
    return value


def _as_accountant(accountant: str | PrivacyAccountant) -> PrivacyAccountant:
    return accountant if isinstance(accountant, PrivacyAccountant) else create_accountant(accountant)


def noise_multiplier_for_target(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str | PrivacyAccountant = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Noise multiplier so that ``steps`` steps at ``sample_rate`` end at epsilon <= ``target_epsilon``.

    Args:
        target_epsilon: epsilon not to exceed (total, including ``accountant``'s past history).
        delta: the delta of the guarantee.
        sample_rate: Poisson sampling rate q in (0, 1].
        steps: number of steps to be taken (>= 1).
        accountant: "rdp" / "prv", or an accountant object whose history is the spend so far
            (it is not modified).
        epsilon_tolerance: stop when ``target_epsilon - epsilon <= epsilon_tolerance``.

    Raises:
        InvalidPrivacyParameter: bad arguments, or the target cannot be met with any noise
            (e.g. the past spend alone already exceeds it).
    """
    return _calibrate(target_epsilon, delta, sample_rate, steps, _as_accountant(accountant), epsilon_tolerance)[0]


def _calibrate(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, acc: PrivacyAccountant, epsilon_tolerance: float
) -> tuple[float, float]:
    """``(noise multiplier, epsilon it gives)``; see :func:`noise_multiplier_for_target`."""
    target = _positive("target epsilon", target_epsilon)
    delta = check_delta(delta)
    q = check_sample_rate(sample_rate)
    steps = check_steps(steps, minimum=1)
    tol = _positive("epsilon tolerance", epsilon_tolerance)

    prior = acc.get_epsilon(delta)
    if prior >= target:
        raise InvalidPrivacyParameter(
            f"target epsilon {target:g} cannot be met: {prior:.4g} is already spent (delta={delta:g})"
        )

    def epsilon(sigma: float) -> float:
        return acc.projected_epsilon(delta, sigma, q, steps)

    start = 1.0
    if not isinstance(acc, RDPAccountant):  # cheap RDP answer: a close, usually slightly high, start
        rdp = RDPAccountant(history=acc.history)
        start = _solve(lambda s: rdp.projected_epsilon(delta, s, q, steps), target, tol, 1.0)[0]
    return _solve(epsilon, target, tol, start)


def _solve(epsilon: Callable[[float], float], target: float, tol: float, start: float) -> tuple[float, float]:
    cache: dict[float, float] = {}

    def f(sigma: float) -> float:
        if sigma not in cache:
            cache[sigma] = epsilon(sigma)
        return cache[sigma]

    # 1. bracket f(lo) > target >= f(hi), stepping by a log-log secant guess (epsilon ~ sigma^-k,
    #    k >= 1 in the usual regimes; assuming k = 0.8 overshoots, so one step usually brackets)
    def next_sigma(sigma: float, value: float, low: float, high: float) -> float:
        ratio = 2.0 if math.isinf(value) else (max(value, 1e-300) / target) ** 1.25
        return sigma * min(max(ratio, low), high)

    hi = start
    if f(hi) <= target:
        if target - f(hi) <= tol:
            return hi, f(hi)
        lo = next_sigma(hi, f(hi), 0.5, 0.98)
        while f(lo) <= target:
            if target - f(lo) <= tol:
                return lo, f(lo)
            hi, lo = lo, next_sigma(lo, f(lo), 0.5, 0.98)
            if lo < MIN_NOISE_MULTIPLIER:
                return hi, f(hi)
    else:
        lo, hi = hi, next_sigma(hi, f(hi), 1.02, 2.0)
        while f(hi) > target:
            lo, hi = hi, next_sigma(hi, f(hi), 1.02, 2.0)
            if hi > MAX_NOISE_MULTIPLIER:
                raise InvalidPrivacyParameter(
                    f"target epsilon {target:g} needs a noise multiplier above {MAX_NOISE_MULTIPLIER:g}; "
                    "the privacy budget is too small for this many steps"
                )

    # 2. Illinois regula falsi on g(x) = log f(e^x) - log target, with x = log sigma
    def g(sigma: float) -> float:
        value = f(sigma)
        return math.inf if value == math.inf else math.log(max(value, 1e-300)) - math.log(target)

    x_lo, x_hi = math.log(lo), math.log(hi)
    g_lo, g_hi = g(lo), g(hi)
    side = 0
    for _ in range(100):
        if target - f(hi) <= tol or x_hi - x_lo < 1e-12:
            break
        if math.isinf(g_lo) or g_lo == g_hi:
            x_new = (x_lo + x_hi) / 2
        else:
            x_new = (x_lo * g_hi - x_hi * g_lo) / (g_hi - g_lo)
            width = x_hi - x_lo
            x_new = min(max(x_new, x_lo + 1e-3 * width), x_hi - 1e-3 * width)
        s_new = math.exp(x_new)
        g_new = g(s_new)
        if g_new > 0:
            lo, x_lo, g_lo = s_new, x_new, g_new
            if side == -1:
                g_hi /= 2
            side = -1
        else:
            hi, x_hi, g_hi = s_new, x_new, g_new
            if side == 1 and not math.isinf(g_lo):
                g_lo /= 2
            side = 1
    return hi, f(hi)


@dataclass(frozen=True)
class Plan:
    """A DP-SGD plan for a federated job at one site (Poisson sampling).

    ``epsilon_after_each_round[i]`` is the total epsilon (past spend of the accountant given, if
    any, included) after round ``epsilon_rounds[i]`` (every round ``1..rounds`` for short jobs).
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    epsilon_after_each_round: list[float]
    epsilon_rounds: list[int] = field(default_factory=list)
    rounds: int = 0
    target_epsilon: float = 0.0
    delta: float = 0.0
    accountant: str = "rdp"
    dataset_size: int = 0
    batch_size: int = 0
    epochs_per_round: int = 0
    epsilon_before: float = 0.0
    total_steps: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_steps", self.steps_per_round * self.rounds)

    @property
    def final_epsilon(self) -> float:
        return self.epsilon_after_each_round[-1] if self.epsilon_after_each_round else self.epsilon_before

    def to_dict(self) -> dict:
        return asdict(self)


def plan(
    dataset_size: int,
    batch_size: int,
    epochs_per_round: int,
    rounds: int,
    target_epsilon: float,
    delta: float,
    accountant: str | PrivacyAccountant = "rdp",
    epsilon_tolerance: float = 0.01,
) -> Plan:
    """Plan DP-SGD over a federated job: ``rounds`` rounds of ``epochs_per_round`` local epochs.

    ``sample_rate = batch_size / dataset_size`` (Poisson sampling, expected batch size
    ``batch_size``) and ``steps_per_round = epochs_per_round * ceil(1 / sample_rate)``.
    The noise multiplier keeps the epsilon after the last round <= ``target_epsilon``. Pass an
    accountant object holding the dataset's past spend to plan the *total*. ``epsilon_rounds``
    says after which rounds ``epsilon_after_each_round`` is given (see the module doc).

    Raises:
        InvalidPrivacyParameter: bad arguments, an unreachable target, or the PRV accountant over
            more than :data:`PRV_MAX_STEPS` steps.
    """
    n = check_steps(dataset_size, minimum=1)
    b = check_steps(batch_size, minimum=1)
    if b > n:
        raise InvalidPrivacyParameter(f"batch size ({b}) must not exceed the dataset size ({n})")
    epochs = check_steps(epochs_per_round, minimum=1)
    rounds = check_steps(rounds, minimum=1)
    target = _positive("target epsilon", target_epsilon)
    delta = check_delta(delta)
    acc = _as_accountant(accountant)

    q = b / n
    steps_per_round = epochs * (-(-n // b))  # ceil(1/q) in exact integer arithmetic
    prv = acc.mechanism == "prv"
    if prv and acc.total_steps + steps_per_round * rounds > PRV_MAX_STEPS:
        raise InvalidPrivacyParameter(
            f"the PRV accountant is limited to {PRV_MAX_STEPS} steps here ({steps_per_round * rounds} planned"
            + (f", {acc.total_steps} already spent" if acc.total_steps else "") + "): its time and memory grow "
            "with the steps; use the RDP accountant (a slightly looser upper bound)")
    sigma, final = _calibrate(target, delta, q, steps_per_round * rounds, acc, epsilon_tolerance)
    listed = rounds_to_list(rounds, PRV_LISTED_ROUNDS if prv else MAX_LISTED_ROUNDS)
    per_round = [acc.projected_epsilon(delta, sigma, q, r * steps_per_round) for r in listed[:-1]] + [final]
    return Plan(
        noise_multiplier=sigma,
        sample_rate=q,
        steps_per_round=steps_per_round,
        epsilon_after_each_round=per_round,
        epsilon_rounds=listed,
        rounds=rounds,
        target_epsilon=target,
        delta=delta,
        accountant=acc.mechanism,
        dataset_size=n,
        batch_size=b,
        epochs_per_round=epochs,
        epsilon_before=acc.get_epsilon(delta),
    )

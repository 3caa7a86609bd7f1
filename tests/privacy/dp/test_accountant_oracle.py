"""Our accountants against oracles that do not go through opacus (the accountants call opacus's
analysis, so opacus-vs-opacus parity in test_accountants.py proves only the wiring).

Oracles:
* Google's ``dp-accounting`` RDP accountant (its own code for the subsampled Gaussian's RDP) and
  its PLD accountant (privacy-loss distributions: a different numerical method from the PRV one);
* direct numerical integration (mpmath, 40 digits) of the subsampled Gaussian's A_alpha.

Settings were picked for this test, not taken from the published examples the accountants were
checked on (MNIST, CIFAR): small sampling rates with 10^4-2*10^5 steps, full batches, heterogeneous
histories, deltas from 1e-5 to 1e-7.

Tolerances and why:
* RDP at integer orders: A_alpha is a finite sum, both libraries compute it exactly in log space,
  and the RDP -> (epsilon, delta) conversion is the same formula (Balle et al. 2020 Thm 21 =
  Canonne et al. Prop 12): relative 1e-9 (measured differences <= 1.4e-11).
* RDP at our default orders (fractional ones included): dp-accounting 0.6.0 adds the *absolute*
  values of the fractional-order series terms (an upper bound on A_alpha), opacus their signed
  values (exact: it matches direct integration to 1e-8 below). So ours must never exceed Google's and
  may be lower by at most 1 % (measured: <= 0.03 %). The exactness is checked separately against
  the integral, relative 1e-6.
* PRV vs PLD: ours returns the PRV estimate plus its eps_error 0.01 (an upper bound); Google's PLD
  with a 1e-4 discretisation is pessimistic by a little. Measured: ours - PLD in [+0.005, +0.011].
  Required: PLD - 0.005 <= ours <= PLD + 0.02 (eps_error plus 0.01 for both discretisations).
* RDP is never tighter than an (almost) exact accountant: ours_rdp >= PLD - 0.001.
"""

from __future__ import annotations

import mpmath as mp
import pytest

dp_accounting = pytest.importorskip("dp_accounting", reason="test extra: pip install 'ai4hi-sdk[test]'")
from dp_accounting import pld, rdp  # noqa: E402

from ai4hi_sdk.privacy.dp.accountants import PRVAccountant, RDPAccountant  # noqa: E402
from ai4hi_sdk.privacy.dp.accountants.rdp import DEFAULT_ORDERS, _rdp_per_step  # noqa: E402

INTEGER_ORDERS = tuple(float(a) for a in [*range(2, 64), 64, 72, 80, 96, 112, 128, 160, 192, 256])

# (history [(sigma, q, steps), ...], delta)
SETTINGS = [
    ([(0.8, 0.001, 100_000)], 1e-6),   # small q, many steps, low noise
    ([(1.5, 0.0005, 200_000)], 1e-7),  # smaller q, more steps, smaller delta
    ([(0.6, 0.002, 20_000)], 1e-5),    # noise below 1: optimum at a small (fractional) order
    ([(4.0, 0.2, 300)], 1e-5),         # large q
    ([(5.0, 1.0, 50)], 1e-5),          # full batch: no amplification
    ([(1.0, 0.01, 2_000), (2.5, 0.004, 30_000)], 1e-5),  # two jobs on one dataset
]
IDS = ["q1e-3x1e5", "q5e-4x2e5", "sigma0.6", "q0.2", "q1", "two-jobs"]


def _event(history):
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
        for sigma, q, steps in history])


def _google_rdp(history, delta, orders):
    acc = rdp.RdpAccountant(orders=list(orders))
    acc.compose(_event(history))
    return acc.get_epsilon(delta)


def _google_pld(history, delta):
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(_event(history))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("history, delta", SETTINGS, ids=IDS)
def test_rdp_equals_dp_accounting_at_integer_orders(history, delta):
    ours = RDPAccountant(history, orders=INTEGER_ORDERS).get_epsilon(delta)
    assert ours == pytest.approx(_google_rdp(history, delta, INTEGER_ORDERS), rel=1e-9)


@pytest.mark.parametrize("history, delta", SETTINGS, ids=IDS)
def test_rdp_default_orders_never_above_dp_accounting_and_within_one_percent(history, delta):
    ours = RDPAccountant(history).get_epsilon(delta)
    google = _google_rdp(history, delta, DEFAULT_ORDERS)
    assert google * 0.99 <= ours <= google * (1 + 1e-9)


@pytest.mark.parametrize("sigma, q, order", [(0.6, 0.002, 1.02), (0.6, 0.002, 3.4), (1.0, 0.01, 1.3),
                                             (4.0, 0.2, 2.5)])
def test_fractional_order_rdp_equals_direct_integration(sigma, q, order):
    """RDP of one step = log(A_alpha) / (alpha - 1) with A_alpha = E_{z~N(0, sigma^2)}
    [((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha] (Mironov et al. 2019), integrated numerically."""
    mp.mp.dps = 40
    s, qq, a = mp.mpf(sigma), mp.mpf(q), mp.mpf(order)
    density = lambda z: mp.npdf(z, 0, s) * ((1 - qq) + qq * mp.exp((2 * z - 1) / (2 * s * s))) ** a  # noqa: E731
    breaks = sorted({-mp.inf, mp.inf, *(k * s for k in range(-12, 13)), *(1 + k * s for k in range(0, 60, 2))})
    exact = float(mp.log(mp.quad(density, breaks)) / (a - 1))
    ours = _rdp_per_step(sigma, q, (order,))[0]
    assert ours == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("history, delta", SETTINGS, ids=IDS)
def test_prv_matches_dp_accounting_pld(history, delta):
    google = _google_pld(history, delta)
    ours_prv = PRVAccountant(history).get_epsilon(delta)
    assert google - 0.005 <= ours_prv <= google + 0.02
    assert RDPAccountant(history).get_epsilon(delta) >= google - 1e-3

import math

import pytest

from ai4hi_sdk.validation.meta_analysis import fixed_effect, random_effects


def test_hand_computed_dersimonian_laird():
    # y = (0, 1, 2), v = (1, 1, 0.5): w = (1, 1, 2), sum w = 4
    # fixed = (0 + 1 + 4) / 4 = 1.25; Q = 1.5625 + 0.0625 + 2*0.5625 = 2.75; C = 4 - 6/4 = 2.5
    # tau2 = (2.75 - 2) / 2.5 = 0.3; w* = (1/1.3, 1/1.3, 1/0.8)
    r = random_effects([0.0, 1.0, 2.0], [1.0, 1.0, 0.5])
    assert r["fixed"]["estimate"] == pytest.approx(1.25)
    assert r["fixed"]["se"] == pytest.approx(0.5)
    assert r["q"] == pytest.approx(2.75)
    assert r["tau2"] == pytest.approx(0.3)
    w = [1 / 1.3, 1 / 1.3, 1 / 0.8]
    est = (w[1] * 1 + w[2] * 2) / sum(w)
    assert r["estimate"] == pytest.approx(est)
    assert r["se"] == pytest.approx(math.sqrt(1 / sum(w)))
    assert r["i2"] == pytest.approx(0.75 / 2.75)
    assert r["ci"][0] == pytest.approx(est - 1.959964 * math.sqrt(1 / sum(w)), abs=1e-5)


def test_homogeneous_sites_reduce_to_fixed():
    r = random_effects([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    assert r["tau2"] == 0 and r["i2"] == 0
    assert r["estimate"] == pytest.approx(fixed_effect([0.5] * 3, [0.1, 0.2, 0.3])["estimate"])


def test_rejects_bad_variances():
    with pytest.raises(ValueError):
        fixed_effect([1.0], [0.0])

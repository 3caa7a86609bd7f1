import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ai4hi_sdk.validation.subgroups import max_gap, subgroup_audit, subgroup_gaps


def _data(seed=0):
    rng = np.random.default_rng(seed)
    n = 200
    sex = rng.choice(["F", "M"], n).tolist()
    manu = (["GE"] * 120 + ["Siemens"] * 70 + ["Philips"] * 7 + ["Canon"] * 3)
    age = (["<40"] * 95 + ["40-65"] * 100 + [">65"] * 5)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y)))
    return y, p, {"sex": sex, "manufacturer": manu, "age_band": age}


def test_cells_match_central_computation():
    y, p, attrs = _data()
    audit = subgroup_audit(y, p, attrs)
    sex = np.array(attrs["sex"])
    f = audit["sex"]["F"]
    assert f["n"] == int((sex == "F").sum())
    assert f["auroc"] == pytest.approx(roc_auc_score(y[sex == "F"], p[sex == "F"]))
    sel = (sex == "F") & (y == 1)
    assert f["sensitivity"] == pytest.approx((p[sel] >= 0.5).mean())


def test_suppression_hides_every_cell_under_k():
    y, p, attrs = _data()
    audit = subgroup_audit(y, p, attrs, min_count=10)
    for attr, cells in audit.items():
        for value, cell in cells.items():
            true_n = attrs[attr].count(value)
            if true_n < 10:
                assert cell == {"suppressed": True}
            if not cell.get("suppressed"):
                assert cell["n"] >= 10
    # two small manufacturers hide each other; GE/Siemens shown
    assert audit["manufacturer"]["Philips"] == {"suppressed": True}
    assert audit["manufacturer"]["Canon"] == {"suppressed": True}
    assert audit["manufacturer"]["GE"]["n"] == 120
    # one small age band: complementary suppression of the smallest other band (<40, n=95)
    assert audit["age_band"][">65"] == {"suppressed": True}
    assert audit["age_band"]["<40"] == {"suppressed": True}
    assert audit["age_band"]["40-65"]["n"] == 100


def test_class_rates_need_k_examples_of_the_class():
    y = np.array([1] * 3 + [0] * 20)
    p = np.linspace(0, 1, 23)
    cell = subgroup_audit(y, p, {"site": ["a"] * 23})["site"]["a"]
    assert cell["sensitivity"] is None and cell["auroc"] is None and cell["specificity"] is not None


def test_nothing_per_patient_in_output():
    y, p, attrs = _data()
    text = json.dumps(subgroup_audit(y, p, attrs))
    for prob in p:
        assert repr(float(prob)) not in text
        assert f"{prob:.6f}" not in text


def test_dp_noised_counts_are_seeded():
    y, p, attrs = _data()
    a = subgroup_audit(y, p, attrs, dp_epsilon=0.5, seed=3)
    b = subgroup_audit(y, p, attrs, dp_epsilon=0.5, seed=3)
    assert a == b and a["sex"]["F"]["n_noised"]
    true = attrs["sex"].count("F")
    assert a["sex"]["F"]["n"] != true or a["sex"]["M"]["n"] != attrs["sex"].count("M")


def test_max_gap_ignores_suppressed():
    audit = {
        "sex": {"F": {"n": 50, "auroc": 0.9}, "M": {"n": 50, "auroc": 0.8}},
        "scanner": {"A": {"n": 40, "auroc": 0.95}, "B": {"suppressed": True}, "C": {"n": 30, "auroc": None}},
    }
    assert subgroup_gaps(audit, "auroc") == {"sex": pytest.approx(0.1), "scanner": None}
    assert max_gap(audit, "auroc") == pytest.approx(0.1)

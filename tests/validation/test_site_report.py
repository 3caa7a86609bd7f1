"""Site validation report: agrees with scikit-learn computed centrally on the same predictions,
suppresses every small cell, and its wire form carries nothing per study."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from ai4hi_sdk.validation.site_report import (
    REPORT_ROOTS,
    check_aggregate_payload,
    flatten_metrics,
    site_validation_report,
    unflatten_metrics,
)


def _data(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cand = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, n), 0.001, 0.999)
    champ = np.clip(0.5 + 0.1 * (2 * y - 1) + rng.normal(0, 0.25, n), 0.001, 0.999)
    attrs = {"sex": rng.choice(["F", "M"], n).tolist(),
             "age_band": rng.choice(["18-39", "40-59", "60-79", "80+"], n, p=[0.3, 0.35, 0.32, 0.03]).tolist(),
             "manufacturer": rng.choice(["GE", "Siemens", "Hologic"], n, p=[0.6, 0.37, 0.03]).tolist()}
    return y, cand, champ, attrs


def _wire(report: dict) -> dict:
    return unflatten_metrics(flatten_metrics(report))  # exactly what the server reads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_site_metrics_equal_central_sklearn(seed):
    y, cand, champ, attrs = _data(seed)
    threshold = 0.6
    rep = _wire(site_validation_report(y, cand, champ, attrs, threshold=threshold, min_count=10))
    for role, p in (("candidate", cand), ("champion", champ)):
        r = rep[role]
        tn, fp, fn, tp = confusion_matrix(y, p >= threshold).ravel()
        assert r["n"] == len(y) and r["positives"] == int(y.sum())
        assert r["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert r["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert r["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert r["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
        bins = np.clip((p * 10).astype(int), 0, 9)
        ece = sum(abs(p[bins == b].mean() - y[bins == b].mean()) * (bins == b).mean() for b in range(10) if (bins == b).any())
        assert r["ece"] == pytest.approx(ece, abs=1e-12)
        assert r["auroc_ci"][0] < r["auroc"] < r["auroc_ci"][1]
        for attr, values in attrs.items():
            values = np.array(values)
            for group, cell in r["subgroups"][attr]["cells"].items():
                sel = values == group
                assert cell["n"] == sel.sum()
                if cell.get("auroc") is not None:
                    assert cell["auroc"] == pytest.approx(roc_auc_score(y[sel], p[sel]), abs=1e-12)
        for b in r["calibration"]["bins"]:
            sel = (p >= b["lo"]) & ((p < b["hi"]) if b["hi"] < 1 else (p <= 1))
            assert b["n"] == sel.sum() and b["observed"] == pytest.approx(y[sel].mean())
    assert rep["paired"]["delta"] == pytest.approx(roc_auc_score(y, cand) - roc_auc_score(y, champ), abs=1e-12)
    assert rep["paired"]["ci"][0] < rep["paired"]["delta"] < rep["paired"]["ci"][1]


@pytest.mark.parametrize("k", [5, 10, 25])
def test_suppression_hides_every_cell_under_k(k):
    y, cand, champ, attrs = _data(3, n=200)
    rep = site_validation_report(y, cand, champ, attrs, min_count=k)
    flat = flatten_metrics(rep)
    for role in ("candidate", "champion"):
        for attr, values in attrs.items():
            counts = {v: values.count(v) for v in set(values)}
            shown = rep[role]["subgroups"][attr]["cells"]
            assert all(c["n"] >= k for c in shown.values())
            for group, count in counts.items():
                if count < k:  # primary suppression: neither shown nor named anywhere on the wire
                    assert group not in shown
                    assert not any(f"|{group}|" in name for name in flat)
            hidden = len(counts) - len(shown)
            assert rep[role]["subgroups"][attr]["suppressed_cells"] == hidden
            if any(c < k for c in counts.values()):
                assert hidden >= 2 or len(counts) == 1  # complementary suppression: never exactly one
        assert all(b["n"] >= k for b in rep[role]["calibration"]["bins"])


def test_wire_form_has_nothing_per_study():
    for n in (100, 1000, 5000):
        y, cand, champ, attrs = _data(4, n=n)
        flat = flatten_metrics(site_validation_report(y, cand, champ, attrs))
        assert check_aggregate_payload(flat, REPORT_ROOTS) is None
        per_study = set(np.round(cand, 12)) | set(np.round(champ, 12))
        assert not per_study & {round(v, 12) for v in flat.values()}
        # bounded by categories and bins, never by studies: per model <= 20 scalars, 4 numbers + 1 name
        # per shown cell, 5 per calibration bin; + paired test and meta
        groups = sum(len(set(v)) for v in attrs.values())
        bound = 2 * (20 + 5 * groups + len(attrs) + 5 * 10 + 1) + 10 + 5
        assert len(flat) <= bound


def test_payload_guard_rejects_what_is_not_an_aggregate():
    assert "outside the validation schema" in check_aggregate_payload({"scores[0]": 0.3}, REPORT_ROOTS)
    assert "finite" in check_aggregate_payload({"candidate|auroc": float("nan")}, REPORT_ROOTS)
    assert "finite" in check_aggregate_payload({"candidate|auroc": "0.8"}, REPORT_ROOTS)
    many = {f"candidate|x{i}": 0.5 for i in range(6000)}
    assert "not an aggregate" in check_aggregate_payload(many, REPORT_ROOTS)
    with pytest.raises(TypeError):
        flatten_metrics({"candidate": {"uid": "1.2.3"}})  # strings never leave


def test_flatten_round_trip():
    nested = {"candidate": {"auroc_ci": [0.1, 0.9], "n": 12, "subgroups": {"manufacturer": {"cells": {
        "Canon/Toshiba": {"n": 11, "auroc": None}}, "suppressed_cells": 2}}, "calibration": {"bins": [{"n": 10, "lo": 0.0}]}}}
    back = unflatten_metrics(flatten_metrics(nested))
    assert back["candidate"]["auroc_ci"] == [0.1, 0.9] and back["candidate"]["n"] == 12
    assert back["candidate"]["subgroups"]["manufacturer"]["cells"]["Canon/Toshiba"] == {"n": 11}
    assert back["candidate"]["calibration"]["bins"] == [{"n": 10, "lo": 0.0}]


def test_one_class_site_has_no_auroc_and_no_paired_test():
    y = np.zeros(30, int)
    rep = _wire(site_validation_report(y, np.full(30, 0.2), np.full(30, 0.3), {"sex": ["F"] * 30}))
    assert "auroc" not in rep["candidate"] and "delta" not in rep["paired"]
    assert rep["candidate"]["specificity"] == 1.0

"""The classification kind: its site report is the classification report at each model's operating
point, its evidence carries the operating point's counts (also from older reports that sent only
rates), and its card rows, summary columns and progress line show AUROC."""

from __future__ import annotations

import numpy as np
import pytest

from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.tasks.base import ReportSettings, SitePredictions
from ai4hi_sdk.tasks.classification import operating_counts, operating_point_fields
from ai4hi_sdk.tasks.registry import task_strategy
from ai4hi_sdk.validation.classification import paired_auroc_difference
from ai4hi_sdk.validation.site_report import flatten_metrics, site_validation_report, unflatten_metrics

TASK = task_strategy("classification")


def _predictions(seed: int = 0, n: int = 200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    champ = 1 / (1 + np.exp(-(rng.normal(size=n) + 0.5 * (2 * y - 1))))
    cand = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * (2 * y - 1))))
    return y, cand, champ, {"sex": np.where(rng.random(n) < 0.5, "F", "M").tolist()}


def test_the_site_report_is_the_classification_report_at_each_models_operating_point():
    y, cand, champ, attrs = _predictions()
    cfg = ValidationSpec(attributes=["sex"])
    ops = {"candidate": {"threshold": 0.3, "calibration": {"a": 1.2, "b": -0.1}}}
    rep = TASK.site_report(SitePredictions(y, cand, champ, attrs), ReportSettings(cfg, 10, ops))
    direct = site_validation_report(y, cand, champ, attrs, threshold=0.3, champion_threshold=cfg.threshold,
                                    candidate_calibration={"a": 1.2, "b": -0.1}, min_count=10)
    assert rep["candidate"] == direct["candidate"] and rep["champion"] == direct["champion"]
    assert rep["paired"] == direct["paired"]
    assert rep["meta"]["operating_points_from_server"] == {"candidate": 1, "champion": 0}
    assert rep["meta"]["calibration_bins"] == cfg.calibration_bins and rep["meta"]["threshold"] == 0.3


def test_evidence_has_the_delong_change_and_the_operating_point_counts():
    y, cand, champ, attrs = _predictions()
    rep = unflatten_metrics(flatten_metrics(TASK.site_report(SitePredictions(y, cand, champ, attrs),
                                                             ReportSettings(ValidationSpec(attributes=["sex"]), 10))))
    notes: list[str] = []
    ev = TASK.site_evidence("A", rep, notes=notes, drift_alarm=True)
    reference = paired_auroc_difference(y, cand, champ)
    assert ev.metric == "auroc" and ev.score_delta == pytest.approx(reference["delta"]) and ev.drift_alarm
    assert ev.score_delta_ci == pytest.approx(tuple(reference["ci"]))
    pred = cand >= 0.5
    assert ev.candidate_counts.tp == int((pred & (y == 1)).sum()) and ev.candidate_counts.tn == int((~pred & (y == 0)).sum())
    assert ev.candidate_sensitivity_gap is not None and notes == []
    one_class = {**rep, "paired": {"undefined": 1.0}}
    assert TASK.site_evidence("B", one_class, notes=notes) is None
    assert notes == ["site B left out: AUROC undefined (one class in its test split)"]


def test_counts_from_reports_that_sent_only_rates():
    assert operating_counts({"n": 100, "positives": 40, "tp": 30, "tn": 50}) == \
        {"tp": 30, "positives": 40, "tn": 50, "negatives": 60}
    assert operating_counts({"n": 100, "positives": 40, "sensitivity": 0.75, "specificity": 0.5}) == \
        {"tp": 30, "positives": 40, "tn": 30, "negatives": 60}
    assert operating_counts({"n": 100, "positives": 40, "sensitivity": 0.75}) is None  # no specificity: unknown
    assert operating_counts({"n": 100}) is None
    fields = operating_point_fields({"candidate": {"n": 10, "positives": 0, "ece": 0.1, "threshold": 0.4}})
    assert fields["candidate_counts"] is None  # no positives, but no way to know the true negatives
    assert fields["candidate_ece"] == 0.1 and fields["candidate_threshold"] == 0.4 and fields["champion_counts"] is None


def test_card_rows_summary_columns_and_progress_line():
    y, cand, champ, attrs = _predictions()
    rep = TASK.site_report(SitePredictions(y, cand, champ, attrs), ReportSettings(ValidationSpec(attributes=["sex"]), 10))
    site = TASK.card_site(rep)
    assert site["auroc"] == rep["candidate"]["auroc"] and site["auroc_change_vs_champion"] == rep["paired"]["delta"]
    assert set(site["subgroups"]["sex"]) == {"F", "M"}
    lines = TASK.card_markdown({"sites": {"A": site}, "k": 10})
    assert lines[0].startswith("| site | n | AUROC (95 % CI) |") and any(line.startswith("| A | sex | F |") for line in lines)
    assert TASK.summary_columns == ("val_auroc", "val_accuracy", "val_loss", "val_samples")
    line = TASK.site_line(rep)
    assert line.startswith(f"n=200 AUROC {rep['candidate']['auroc']:.3f} (champion {rep['champion']['auroc']:.3f}, change ")
    assert "at its operating point sensitivity" in line

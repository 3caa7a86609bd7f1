"""A site's part of a model version's operating point, and the test-split validation at it: the
histograms come from the validation split only (k-merged with the site's k), the server's operating
point is checked before use and then applied exactly, and the robustness panel and the site-local
explanation page are made at the site with only counts leaving. The runtime is called directly,
as the site executor does (no NVFlare)."""

from __future__ import annotations

import math
import stat

import numpy as np
import pytest

from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.site.validation import EXPLANATIONS_DIR, checked_operating_points
from ai4hi_sdk.validation.calibration import apply_calibration, calibration_summary
from ai4hi_sdk.validation.operating_point import N_BINS, operating_point_payload
from ai4hi_sdk.validation.robustness import perturbation_labels
from ai4hi_sdk.validation.site_report import flatten_metrics, unflatten_metrics

K = 4
SPLITS = {"n_train": 16, "n_val": 40, "n_test": 24}


def _runtime(site, **validation):
    site.policy(require_dp=False, min_count=K)
    return site.runtime(model=SPLITS, validation={"min_count": 2, "attributes": ["sex"], **validation})


def _models(runtime):
    from ai4hi_sdk.trainers.state import exchanged_state

    start = exchanged_state(runtime.model)
    other = {k: v + 0.05 * (i % 3 - 1) for i, (k, v) in enumerate(start.items())}
    return start, other


def test_histograms_are_of_the_validation_split_k_merged_with_the_sites_k(site):
    runtime = _runtime(site)
    cand, champ = _models(runtime)
    out = runtime.operating_point({"candidate": cand, "champion": champ})
    assert not out.params and len(out.metrics) == 2 * (6 * N_BINS + 3)
    got = unflatten_metrics(out.metrics)
    for role, state in (("candidate", cand), ("champion", champ)):
        scores, labels, _ = runtime.trainer.predict_validation(state)
        assert len(labels) == SPLITS["n_val"]
        # an independent recomputation from the site's own predictions: the same payload, k = the site's 4
        want = unflatten_metrics(flatten_metrics({role: operating_point_payload(scores, labels, split="validation",
                                                                                min_count=K)}))[role]
        assert got[role] == want and got[role]["meta"]["k"] == K
        for c in ("pos", "neg"):  # every non-empty bin holds at least k studies of its class
            counts = np.asarray(got[role]["histogram"][c])
            assert ((counts == 0) | (counts >= K)).all() and counts.sum() == (labels == (c == "pos")).sum()
        test_scores, test_labels, _ = runtime.trainer.predict_test(state)
        from_test = operating_point_payload(test_scores, test_labels, split="validation", min_count=K)
        assert got[role]["histogram"] != unflatten_metrics(flatten_metrics(from_test))["histogram"]


def test_the_operating_point_task_refuses_what_it_cannot_describe(site):
    runtime = _runtime(site)
    cand, _ = _models(runtime)
    with pytest.raises(RoundRefused, match="models among"):
        runtime.operating_point({"other": cand})
    small = site.runtime(model={**SPLITS, "n_val": 3}, validation={"min_count": 2}, job_id="job-2")
    with pytest.raises(RoundRefused, match="validation split has 3 studies, fewer than k = 4"):
        small.operating_point({"candidate": cand})


@pytest.mark.parametrize("given,field", [
    ({"candidate": {"threshold": 0.0}}, "candidate.threshold"),
    ({"candidate": {"threshold": 1.0}}, "candidate.threshold"),
    ({"champion": {"threshold": math.nan}}, "champion.threshold"),
    ({"candidate": {"threshold": "0.5"}}, "candidate.threshold"),
    ({"candidate": {"threshold": 0.3, "calibration": {"a": 0.0, "b": 0.0}}}, "candidate.calibration"),
    ({"candidate": {"threshold": 0.3, "calibration": {"a": 1.0, "b": math.inf}}}, "candidate.calibration"),
    ({"deployed": {"threshold": 0.3}}, "expected roles"),
])
def test_a_bad_operating_point_from_the_server_is_refused_naming_the_field(site, given, field):
    with pytest.raises(RoundRefused, match=field):
        checked_operating_points(given)
    runtime = _runtime(site)
    cand, champ = _models(runtime)
    with pytest.raises(RoundRefused, match=field):
        runtime.cross_validate(cand, champ, given)


def test_test_split_validation_at_each_models_operating_point(site):
    runtime = _runtime(site, explanation_images=6)
    cand, champ = _models(runtime)
    ops = {"candidate": {"threshold": 0.45, "calibration": {"a": 2.0, "b": -0.3}},
           "champion": {"threshold": 0.55, "calibration": None}}
    out = runtime.cross_validate(cand, champ, ops)
    rep = unflatten_metrics(out.metrics)
    assert rep["meta"]["threshold"] == 0.45 and rep["meta"]["champion_threshold"] == 0.55
    for role, state in (("candidate", cand), ("champion", champ)):
        scores, labels, _ = runtime.trainer.predict_test(state)
        thr, cal = ops[role]["threshold"], ops[role]["calibration"]
        pred = scores >= thr  # a monotone recalibration moves the threshold with the scores
        got = rep[role]
        assert got["tp"] == int((pred & (labels == 1)).sum()) and got["tn"] == int((~pred & (labels == 0)).sum())
        assert got["sensitivity"] == pytest.approx(pred[labels == 1].mean())
        assert got["recalibrated"] == (cal is not None)
        want = calibration_summary(labels, scores, cal)
        assert got["calibration_summary"]["before"]["ece"] == pytest.approx(want["before"]["ece"])
        if cal:
            assert got["calibration_summary"]["after"]["brier"] == pytest.approx(want["after"]["brier"])
            q = apply_calibration(scores, cal)
            assert got["brier"] == pytest.approx(float(((q - labels) ** 2).mean()))
        # robustness panel at the site: every default perturbation, AUROC and its change
        panel = got["robustness"]
        assert set(panel["perturbations"]) == set(perturbation_labels())
        assert panel["worst_delta"] == min(p["delta"] for p in panel["perturbations"].values())
        # explanations: only counts leave
        assert got["explanations"] == {"n_images": 6, "n_masked": 0}
    names = [n for n in out.metrics if "|explanations|" in n]
    assert sorted(names) == sorted(f"{r}|explanations|{k}" for r in ("candidate", "champion")
                                   for k in ("n_images", "n_masked"))
    pages = list((site.workspace / EXPLANATIONS_DIR).glob("*/explanations.html"))
    assert len(pages) == 1 and stat.S_IMODE(pages[0].stat().st_mode) == 0o600
    assert pages[0].read_text().count("data:image/png;base64,") == 6


def test_without_operating_points_both_models_use_the_jobs_fixed_threshold(site):
    runtime = _runtime(site, threshold=0.35, robustness=False, explanation_images=0)
    cand, champ = _models(runtime)
    rep = unflatten_metrics(runtime.cross_validate(cand, champ).metrics)
    assert rep["meta"]["threshold"] == rep["meta"]["champion_threshold"] == 0.35
    assert "robustness" not in rep["candidate"] and "explanations" not in rep["candidate"]
    assert not (site.workspace / EXPLANATIONS_DIR).exists()

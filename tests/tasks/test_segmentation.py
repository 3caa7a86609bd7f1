"""The segmentation kind: its site report is the Dice/HD95 report with the trainer's voxel spacing;
at a site (the site runtime's validation task on a real SegmentationTrainer over synthetic CT DICOM)
operating points and drift monitoring are refused and the robustness panel is on Dice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.tasks.base import ReportSettings, SitePredictions
from ai4hi_sdk.tasks.registry import task_strategy
from ai4hi_sdk.validation.segmentation_site import site_segmentation_report

TASK = task_strategy("segmentation")
SPEC = JobSpec(name="seg-unit", task="segmentation", trainer="ai4hi_sdk.trainers.segmentation:SegmentationTrainer",
               train={"rounds": 1, "local_epochs": 1, "batch_size": 4, "threads": 1})


def _masks(seed: int, n: int = 12):
    rng = np.random.default_rng(seed)
    true, cand, champ = [], [], []
    for _ in range(n):
        t = np.zeros((6, 10, 10), np.uint8)
        z, y, x = rng.integers(2, 4), rng.integers(3, 7), rng.integers(3, 7)
        t[z - 1:z + 2, y - 2:y + 2, x - 2:x + 2] = 1
        true.append(t)
        cand.append((t & (rng.random(t.shape) > 0.1)).astype(np.uint8))
        champ.append(np.roll(t, int(rng.integers(1, 3)), axis=2))
    return true, cand, champ, {"sex": ["F"] * (n // 2) + ["M"] * (n - n // 2)}


def test_the_site_report_is_the_dice_report_with_the_trainers_spacing():
    true, cand, champ, attrs = _masks(0)

    class WithSpacing:
        def test_spacing(self):
            return (2.5, 1.5, 1.5)

    context = TASK.test_context(WithSpacing())
    assert context == {"spacing": (2.5, 1.5, 1.5)} and TASK.test_context(object()) == {"spacing": None}
    rep = TASK.site_report(SitePredictions(true, cand, champ, attrs, context), ReportSettings(ValidationSpec(), 5))
    assert rep == site_segmentation_report(true, cand, champ, attrs, min_count=5, spacing=(2.5, 1.5, 1.5))
    assert rep["meta"]["hd95_in_mm"] == 1 and TASK.owns_report(rep)
    notes: list[str] = []
    ev = TASK.site_evidence("A", rep, notes=notes)
    assert ev.metric == "dice" and ev.candidate_score == rep["candidate"]["dice"] and ev.score_delta > 0
    assert ev.candidate_counts is None and notes == []
    assert TASK.site_evidence("B", {**rep, "paired": {"undefined": 1.0}}, notes=notes) is None
    assert notes == ["site B left out: mean Dice change undefined (fewer than 2 test cases with a lesion)"]
    assert TASK.summary_columns[:2] == ("val_dice", "val_hd95") and "masks/<SeriesInstanceUID>.npy|.npz" in TASK.site_files


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from ai4hi_sdk.trainers.segmentation import SegmentationTrainer

    site = tmp_path_factory.mktemp("seg") / "hospital-1"
    synth_site(site, site_index=0, task="segmentation", n_studies=24, seed=1)
    return SegmentationTrainer(SPEC, site_dir=site, site_name="hospital-1", device="cpu",
                               site_workspace=tmp_path_factory.mktemp("ws"))


def test_the_site_validates_a_segmentation_job_with_its_strategy(trainer):
    from ai4hi_sdk.site.validation import EXPLANATIONS_DIR, ValidationSite

    start = trainer.initial_state()
    other = {k: v + 0.05 * torch.randn_like(v, generator=torch.Generator().manual_seed(i))
             for i, (k, v) in enumerate(start.items())}
    site = ValidationSite(trainer, ValidationSpec(min_count=2, attributes=["sex"]))
    report = site.cross_validate(start, other)
    # the same aggregates as the segmentation report of the trainer's own predictions, in its mm
    pred_cand, true, attrs = trainer.predict_test(start)
    pred_champ, _, _ = trainer.predict_test(other)
    direct = site_segmentation_report(true, pred_cand, pred_champ, {"sex": attrs.get("sex", ["unknown"] * len(true))},
                                      min_count=2, spacing=trainer.test_spacing())
    assert {k: v for k, v in report["candidate"].items() if k != "robustness"} == direct["candidate"]
    assert report["meta"] == direct["meta"] and report["meta"]["hd95_in_mm"] == 1
    panel = report["candidate"]["robustness"]
    assert set(panel) == {"n", "dice", "perturbations", "worst_delta"} and panel["n"] == len(true)  # scored on Dice
    assert not (trainer.site_workspace / EXPLANATIONS_DIR).exists()  # no saliency pages for masks
    with pytest.raises(RoundRefused, match="operating points apply to classification scores"):
        site.cross_validate(start, other, {"candidate": {"threshold": 0.5}})
    with pytest.raises(RoundRefused, match="threshold on classification scores"):
        site.operating_point({"candidate": start})
    with pytest.raises(ValueError, match="classification-only"):
        site.monitor(start)


def test_a_kind_the_site_does_not_know_is_a_refusal(trainer):
    from ai4hi_sdk.site.validation import ValidationSite

    class Unknown:
        spec = JobSpec(name="x", task="regression")

    with pytest.raises(RoundRefused, match="unknown task kind 'regression'"):
        ValidationSite(Unknown(), ValidationSpec()).cross_validate({}, {})

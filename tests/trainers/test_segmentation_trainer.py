"""SegmentationTrainer on real synthetic CT DICOM (no NVFlare): volumes assembled from slices in
the masks' order, splits by study, training raises Dice, predictions are binary test-split masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.splits import assign_split
from ai4hi_sdk.data.synth import CT_GEOMETRIES, synth_site
from ai4hi_sdk.trainers.segmentation import SegmentationTrainer, combine_reports
from ai4hi_sdk.validation.segmentation import segmentation_report

#: hospital-1 carries the geometry of pydicom's CT5N series: 2.5 mm slices of 0.488281 mm pixels
SPACING = (CT_GEOMETRIES[0].step, *CT_GEOMETRIES[0].pixel_spacing)
SPEC = JobSpec(name="seg-unit", task="segmentation", trainer="ai4hi_sdk.trainers.segmentation:SegmentationTrainer",
               train={"rounds": 3, "local_epochs": 2, "batch_size": 4, "lr": 0.01, "optimizer": "adam", "threads": 1})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "hospital-1"
    synth_site(path, site_index=0, task="segmentation", n_studies=24, seed=1)
    return path


@pytest.fixture(scope="module")
def trainer(site):
    return SegmentationTrainer(SPEC, site_dir=site, site_name="hospital-1", device="cpu")


def test_volumes_and_masks_follow_the_site_files(trainer, site):
    splits = trainer.datasets
    assert sum(splits.counts().values()) == 24
    for part, name in ((splits.train, "train"), (splits.val, "val"), (splits.test, "test")):
        for i, item in enumerate(part.items):
            assert assign_split(item.study_instance_uid) == name
            assert len(item.slice_paths) == 24 and item.spacing == SPACING
            volume, mask = part[i]
            assert volume.shape == mask.shape == (1, 24, 32, 32) and volume.dtype == torch.float32
            stored = np.load(site / "masks" / f"{item.series_instance_uid}.npy")
            np.testing.assert_array_equal(part.true_mask(i), stored)
            # slices are in the masks' (geometry) order, not that of file names or InstanceNumbers;
            # lesions (+50 HU) are brighter than the rest of the body
            body = volume[0] > 0.2
            inside = mask[0].bool()
            assert volume[0][inside].mean() > volume[0][body & ~inside].mean() + 0.05
    assert splits.test.spacing() == SPACING


def test_model_is_the_same_everywhere_and_declares_its_metrics():
    a = SegmentationTrainer(SPEC, device="cpu").initial_state()
    b = SegmentationTrainer(SPEC, device="cpu").initial_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(v.numel() for v in a.values()) < 100_000
    assert {"val_dice", "val_hd95", "global_val_dice", "val_loss"} <= SegmentationTrainer.declared_metrics()


def test_training_raises_dice_and_sends_only_declared_aggregates(trainer):
    state = trainer.initial_state()
    first = None
    for round_index in range(3):
        update = trainer.fit(state, round_index)
        assert set(update.delta) == set(state)
        assert set(update.metrics) <= SegmentationTrainer.declared_metrics()
        assert update.num_samples == len(trainer.datasets.train)
        first = first if first is not None else update.metrics["global_val_dice"]
        state = {k: state[k] + update.delta[k] for k in state}
    assert update.metrics["val_dice"] > first + 0.2, (first, update.metrics)


def test_predict_test_returns_binary_masks_of_the_test_split(trainer):
    state = trainer.initial_state()
    pred, true, attrs = trainer.predict_test(state)
    n = len(trainer.datasets.test)
    assert len(pred) == len(true) == n > 0
    assert all(p.shape == (24, 32, 32) and p.dtype == np.uint8 and set(np.unique(p)) <= {0, 1} for p in pred)
    assert {k: len(v) for k, v in attrs.items()} == {"sex": n, "age_band": n, "manufacturer": n}
    assert trainer.test_spacing() == SPACING
    # evaluate() on the test split reports exactly the Dice of these masks
    trainer.model.eval()
    with torch.no_grad():
        metrics = trainer.evaluate(trainer.model, trainer.datasets.test)
    assert metrics["dice"] == pytest.approx(segmentation_report(pred, true)["dice"], abs=1e-7)


def test_combine_reports_pools_by_support():
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[1:3, 1:3, 1:3] = 1
    pred = gt.copy()
    pred[3, 1:3, 1:3] = 1
    a = segmentation_report([gt, pred], [gt, gt])
    b = segmentation_report([pred], [gt])
    both = segmentation_report([gt, pred, pred], [gt, gt, gt])
    pooled = combine_reports([a, b])
    assert pooled["n"] == 3 and pooled["dice"] == pytest.approx(both["dice"])
    assert pooled["hd95"] == pytest.approx(both["hd95"])


def test_dp_sgd_round_runs_on_the_unet(site, tmp_path):
    """The default UNet (ReLU, InstanceNorm) needs no replacement for opacus; a DP-SGD round spends
    budget and sends only declared metrics."""
    import shutil
    from pathlib import Path

    workspace = tmp_path / "ws"
    (workspace / "ai4hi").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[2] / "ai4hi_sdk" / "templates" / "site_policy.yaml",
                workspace / "ai4hi" / "site_policy.yaml")
    data = SPEC.model_dump()
    data["train"].update(max_steps_per_round=2, local_epochs=1)
    data["privacy"]["dp_sgd"] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    spec = type(SPEC).model_validate(data)
    trainer = SegmentationTrainer(spec, site_dir=site, site_name="hospital-1", device="cpu", site_workspace=workspace)
    state = trainer.initial_state()
    assert trainer.dp_model_changes == []
    update = trainer.fit(state, 0, total_rounds=1)
    assert update.metrics["dp_epsilon"] > 0 and update.metrics["train_steps"] <= 2
    assert set(update.metrics) <= SegmentationTrainer.declared_metrics()
    assert all(torch.isfinite(d).all() for d in update.delta.values())


def test_monitoring_is_refused_for_segmentation(trainer):
    from ai4hi_sdk.config.validation_spec import ValidationSpec
    from ai4hi_sdk.site.validation import ValidationSite

    with pytest.raises(ValueError, match="classification-only"):
        ValidationSite(trainer, ValidationSpec()).monitor(trainer.initial_state())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: segmentation CUDA+AMP path NOT run")
def test_cuda_amp_round_learns_like_cpu(site):
    gpu = SegmentationTrainer(SPEC, site_dir=site, site_name="hospital-1")  # picks CUDA by default
    assert gpu.device.type == "cuda" and gpu.use_amp
    cpu = SegmentationTrainer(SPEC, site_dir=site, site_name="hospital-1", device="cpu")
    start = cpu.initial_state()
    g, c = gpu.fit(start, 0), cpu.fit(start, 0)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 and torch.isfinite(t).all()
               for t in g.delta.values())
    flat_g = torch.cat([t.flatten() for t in g.delta.values()])
    flat_c = torch.cat([t.flatten() for t in c.delta.values()])
    assert torch.nn.functional.cosine_similarity(flat_g, flat_c, dim=0) > 0.8
    pred, true, _ = gpu.predict_test(start)
    assert len(pred) == len(true) and all(p.dtype == np.uint8 for p in pred)


def test_hd95_of_cases_from_sites_of_different_geometry_uses_each_case_s_spacing(trainer, tmp_path):
    """A split holding series of two geometries (CT5N's 2.5 mm, CT2's 1.25 mm): evaluate() measures
    each case's HD95 in its own millimetres and test_spacing() returns one spacing per case."""
    from ai4hi_sdk.data.volumes import DicomVolumeDataset, load_site_volume_splits

    other = tmp_path / "hospital-2"
    synth_site(other, site_index=1, task="segmentation", n_studies=3, seed=4)
    mixed = DicomVolumeDataset(trainer.datasets.test.items + load_site_volume_splits(other).train.items[:2])
    spacings = mixed.spacings()
    assert len(set(spacings)) == 2 and mixed.spacing() is None
    assert (CT_GEOMETRIES[1].step, *CT_GEOMETRIES[1].pixel_spacing) in spacings


    class Threshold(torch.nn.Module):  # bright voxels are "lesion": imperfect, never empty masks
        def forward(self, x):
            return 40.0 * (x - 0.55)

    model = Threshold()
    with torch.no_grad():
        metrics = trainer.evaluate(model, mixed)
    pred, true, _ = trainer.predict_masks(model, mixed)
    assert all(p.any() for p in pred)
    expected = segmentation_report(pred, true, spacing=spacings)
    assert np.isfinite(expected["hd95"]) and metrics["hd95"] == pytest.approx(expected["hd95"], abs=1e-6)
    one_spacing = segmentation_report(pred, true, spacing=spacings[0])
    assert metrics["hd95"] != pytest.approx(one_spacing["hd95"], abs=1e-3)

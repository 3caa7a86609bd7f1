"""Synthetic sites for foundation models: unlabelled studies (a labelled fraction) and the subtle
finding, whose label mean brightness cannot reveal (the bright opacity is the control)."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pydicom
import pytest
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from ai4hi_sdk.cli import main as cli_main
from ai4hi_sdk.data.synth import calibrate, chest_radiograph, synth_consortium, synth_site
from ai4hi_sdk.errors import UserError


def _label_rows(site) -> dict[str, int]:
    with open(site / "labels.csv", newline="") as fh:
        return {r["StudyInstanceUID"]: int(r["label"]) for r in csv.DictReader(fh)}


def _study_uids(site) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
                for p in (site / "dicom").rglob("*.dcm")}


def test_labelled_fraction_leaves_the_rest_unlabelled(tmp_path):
    summary = synth_site(tmp_path / "a" / "hospital-1", site_index=0, n_studies=20, seed=3, labelled_fraction=0.25)
    site = tmp_path / "a" / "hospital-1"
    rows = _label_rows(site)
    studies = _study_uids(site)
    assert summary.labelled == len(rows) == 5 and len(studies) == 20
    assert set(rows) < studies  # every label row is a written study; 15 studies have none
    again = synth_site(tmp_path / "b" / "hospital-1", site_index=0, n_studies=20, seed=3, labelled_fraction=0.25)
    assert _label_rows(tmp_path / "b" / "hospital-1") == rows and again.labelled == 5
    full = synth_site(tmp_path / "c" / "hospital-1", site_index=0, n_studies=20, seed=3)
    assert full.labelled == 20 and set(rows) < set(_label_rows(tmp_path / "c" / "hospital-1"))
    none = synth_site(tmp_path / "d" / "hospital-1", site_index=0, n_studies=4, seed=3, labelled_fraction=0.0)
    assert none.labelled == 0
    assert (tmp_path / "d" / "hospital-1" / "labels.csv").read_text() == "StudyInstanceUID,label\n"


def _features(finding: str, n: int = 240):
    """Per-image mean brightness (stored values and the training pipeline's [0, 1] image) and a
    blob detector's response inside the lung fields, for ``n`` images alternating the label
    across the four site calibrations."""
    from ai4hi_sdk.data.transforms import preprocess_transforms

    pre = preprocess_transforms(64)
    yy, xx = np.mgrid[0:128, 0:128] / 128
    lungs = ((((xx - 0.31) / 0.12) ** 2 + ((yy - 0.45) / 0.24) ** 2 <= 1)
             | (((xx - 0.69) / 0.12) ** 2 + ((yy - 0.45) / 0.24) ** 2 <= 1))
    stored, normalised, blob, labels = [], [], [], []
    for i in range(n):
        rng = np.random.default_rng([11, i])
        positive = i % 2 == 1
        pixels = calibrate(chest_radiograph(rng, positive=positive, finding=finding), (i // 2) % 4, rng)
        stored.append(pixels.mean())
        normalised.append(float(pre(pixels[np.newaxis].astype(np.float32)).mean()))
        lo, hi = np.percentile(pixels, [1, 99])  # the pipeline's intensity normalisation, at full size
        z = np.clip((pixels - lo) / (hi - lo), 0, 1)
        s = 0.04 * 128  # bright blobs: both second derivatives negative, large Hessian determinant
        lxx, lyy = gaussian_filter(z, s, order=(0, 2)), gaussian_filter(z, s, order=(2, 0))
        lxy = gaussian_filter(z, s, order=(1, 1))
        blob.append(np.where((lxx < 0) & (lyy < 0), lxx * lyy - lxy ** 2, 0)[lungs].max())
        labels.append(int(positive))
    return np.array(labels), np.array(stored), np.array(normalised), np.array(blob)


def test_subtle_nodule_has_zero_sum_and_its_contrast_in_a_lung():
    rng = np.random.default_rng(0)
    image = chest_radiograph(rng, finding="opacity")  # any anatomy
    yy, xx = np.mgrid[0:128, 0:128] / 128
    lungs = [((xx - 0.31) / 0.15) ** 2 + ((yy - 0.45) / 0.28) ** 2 <= 1,
             ((xx - 0.69) / 0.15) ** 2 + ((yy - 0.45) / 0.28) ** 2 <= 1]
    from ai4hi_sdk.data.synth import SUBTLE_PEAK, add_subtle_finding

    with_nodule = add_subtle_finding(image, np.random.default_rng(5), lungs, positive=True)
    without = add_subtle_finding(image, np.random.default_rng(5), lungs, positive=False)
    diff = with_nodule - without  # the same target mean is drawn first in both
    assert abs(diff.sum()) < 1e-9 and abs(with_nodule.mean() - without.mean()) < 1e-12
    assert SUBTLE_PEAK[0] <= diff.max() <= SUBTLE_PEAK[1] + 1e-9
    assert (lungs[0] | lungs[1])[np.unravel_index(diff.argmax(), diff.shape)]
    assert diff.min() < 0  # the dark rim


def test_subtle_finding_is_invisible_to_mean_brightness_but_present():
    labels, stored, normalised, blob = _features("subtle")
    for name, values in (("stored", stored), ("normalised", normalised)):
        auroc = roc_auc_score(labels, values)
        assert abs(auroc - 0.5) < 0.1, (name, auroc)
    assert roc_auc_score(labels, blob) > 0.6  # a crude local blob detector sees it (0.67 measured)


def test_bright_opacity_is_the_control_mean_brightness_separates_it():
    labels, _, normalised, _ = _features("opacity")
    assert abs(roc_auc_score(labels, normalised) - 0.5) > 0.15


def test_cli_synth_writes_unlabelled_subtle_sites(tmp_path, capsys):
    rc = cli_main.main(["data", "synth", str(tmp_path), "--sites", "2", "--studies-per-site", "8",
                        "--labelled-fraction", "0.5", "--finding", "subtle"])
    out = capsys.readouterr().out
    assert rc == 0 and "hospital-1 4/8" in out and "hospital-2 4/8" in out
    assert len(_label_rows(tmp_path / "hospital-2")) == 4
    assert len(list((tmp_path / "hospital-2" / "dicom").rglob("*.dcm"))) == 8


@pytest.mark.parametrize("argv, message", [
    (["--labelled-fraction", "1.5"], "labelled fraction must be in [0, 1]"),
    (["--task", "segmentation", "--finding", "subtle"], "classification task only"),
])
def test_cli_synth_rejects_bad_options(tmp_path, capsys, argv, message):
    rc = cli_main.main(["data", "synth", str(tmp_path), "--sites", "1", "--studies-per-site", "2", *argv])
    assert rc == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_unknown_finding_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown finding"):
        synth_consortium(tmp_path, sites=1, studies_per_site=1, finding="glow")

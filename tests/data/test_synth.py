from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from ai4hi_sdk.data.labels import join_labels, load_label_manifest
from ai4hi_sdk.data.scan import scan_directory
from ai4hi_sdk.data.synth import CT_GEOMETRIES, synth_consortium, synth_site
from ai4hi_sdk.errors import UserError

SITES = ("hospital-1", "hospital-2", "hospital-3")


def _read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def _labels(site: Path) -> dict[str, int]:
    with open(site / "labels.csv", newline="") as fh:
        return {r["StudyInstanceUID"]: int(r["label"]) for r in csv.DictReader(fh)}


def test_layout(consortium):
    assert sorted(p.name for p in consortium.iterdir()) == list(SITES)
    for name in SITES:
        site = consortium / name
        assert (site / "labels.csv").read_text().splitlines()[0] == "StudyInstanceUID,label"
        assert len(list((site / "dicom").rglob("*.dcm"))) == 24


def test_round_trip_through_scan(consortium):
    for name in SITES:
        report = scan_directory(consortium / name / "dicom", verify_pixels=True)
        assert report.files_skipped == 0, report.skipped
        assert report.files_read == 24 and len(report.studies) == 24
        rec = report.instances[0]
        assert (rec.rows, rec.columns) == (128, 128) and rec.modality in {"CR", "DX"}
        assert rec.pixel_spacing is not None and rec.age_years is not None
        assert rec.sex in {"F", "M", "O"}
        join = join_labels(report, load_label_manifest(consortium / name / "labels.csv"))
        assert join.coverage == 1.0 and not join.extra_keys and not join.problems


def test_valid_part10_headers(consortium):
    path = next((consortium / "hospital-1" / "dicom").rglob("*.dcm"))
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    ds = _read(path)
    meta = ds.file_meta
    assert meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    for kw in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
               "WindowCenter", "WindowWidth", "KVP", "ManufacturerModelName", "PixelSpacing"):
        assert kw in ds, kw
    assert ds.PatientAge.endswith("Y") and len(ds.PatientAge) == 4
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.pixel_array.dtype == np.uint16
    assert ds.pixel_array.max() <= 4095


def test_sites_differ_in_vendor_and_intensity(consortium):
    vendors, means = [], []
    for name in SITES:
        report = scan_directory(consortium / name / "dicom")
        vendors.append({r.manufacturer for r in report.instances})
        means.append(np.mean([_read(consortium / name / "dicom" / r.path).pixel_array.mean()
                              for r in report.instances]))
    assert vendors == [{"GE"}, {"Siemens"}, {"Philips"}]
    assert min(abs(a - b) for i, a in enumerate(means) for b in means[i + 1:]) > 50


def test_labels_balanced(consortium):
    for name in SITES:
        labels = list(_labels(consortium / name).values())
        assert sum(labels) == 12 and len(labels) == 24


def test_finding_is_learnable(consortium):
    """Positives have a brighter lung-field maximum; that alone separates the classes well."""
    features, labels = [], []
    for name in SITES:
        by_study = _labels(consortium / name)
        for path in sorted((consortium / name / "dicom").rglob("*.dcm")):
            ds = _read(path)
            img = ds.pixel_array.astype(float)
            lo, hi = np.percentile(img, [1, 99])
            img = gaussian_filter((img - lo) / (hi - lo), 1.5)
            n = img.shape[0]
            rows = slice(int(0.2 * n), int(0.7 * n))
            lungs = np.concatenate([img[rows, int(0.15 * n):int(0.42 * n)].ravel(),
                                    img[rows, int(0.58 * n):int(0.85 * n)].ravel()])
            features.append(lungs.max())
            labels.append(by_study[ds.StudyInstanceUID])
    features, labels = np.array(features), np.array(labels)
    assert features[labels == 1].mean() > features[labels == 0].mean() + 0.03
    assert roc_auc_score(labels, features) > 0.75


def test_deterministic(tmp_path):
    a = synth_consortium(tmp_path / "a", sites=2, studies_per_site=4, seed=7)
    b = synth_consortium(tmp_path / "b", sites=2, studies_per_site=4, seed=7)
    assert [s.mean_intensity for s in a] == [s.mean_intensity for s in b]
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    synth_consortium(tmp_path / "c", sites=2, studies_per_site=4, seed=8)
    uids_a, uids_c = _labels(tmp_path / "a" / "hospital-1"), _labels(tmp_path / "c" / "hospital-1")
    assert set(uids_a).isdisjoint(uids_c)


def test_site_content_independent_of_consortium_size(tmp_path, consortium):
    # hospital-2 of a 3-site consortium == hospital-2 written alone (same seed, same index)
    synth_site(tmp_path / "hospital-2", site_index=1, n_studies=24, seed=1)
    assert _tree_digest(tmp_path / "hospital-2") == _tree_digest(consortium / "hospital-2")


def test_drift_shifts_intensity_not_identity(tmp_path):
    base = synth_site(tmp_path / "base", site_index=0, n_studies=3, seed=2)
    drift = synth_site(tmp_path / "drift", site_index=0, n_studies=3, seed=2,
                       intensity_shift=0.1, manufacturer="ACME Imaging")
    assert drift.mean_intensity - base.mean_intensity == pytest.approx(0.1 * 4095, rel=0.15)
    assert _labels(tmp_path / "base") == _labels(tmp_path / "drift")  # same studies, same UIDs
    p0 = next((tmp_path / "base" / "dicom").rglob("*.dcm"))
    p1 = tmp_path / "drift" / p0.relative_to(tmp_path / "base")
    d0, d1 = _read(p0), _read(p1)
    assert d0.SOPInstanceUID == d1.SOPInstanceUID
    assert (d0.WindowCenter, d0.WindowWidth) == (d1.WindowCenter, d1.WindowWidth)  # silent drift
    assert d1.Manufacturer == "ACME Imaging" and d0.Manufacturer == "GE MEDICAL SYSTEMS"


def _slices_by_geometry(site: Path, report, series_uid: str):
    """The series' slice records ordered along n = column x row (computed here, independently)."""
    slices = [r for r in report.instances if r.series_instance_uid == series_uid]
    iop = np.array(slices[0].image_orientation)
    normal = np.cross(iop[3:], iop[:3])
    return sorted(slices, key=lambda r: float(np.dot(r.image_position, normal)))


def test_segmentation_site(ct_site):
    report = scan_directory(ct_site / "dicom", verify_pixels=True)
    assert report.files_skipped == 0 and report.files_read == 3 * 24
    assert set(report.modalities) == {"CT"}
    with open(ct_site / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["SeriesInstanceUID", "mask"]
    series = {s for per_study in report.studies.values() for s in per_study}
    assert {r["SeriesInstanceUID"] for r in rows} == series
    geometry = CT_GEOMETRIES[0]  # hospital-1: pydicom's CT5N
    for row in rows:
        mask = np.load(ct_site / row["mask"])
        assert row["mask"] == f"masks/{row['SeriesInstanceUID']}.npy"
        assert mask.shape == (24, 32, 32) and mask.dtype == np.uint8
        assert 0 < mask.sum() < mask.size // 4
        slices = _slices_by_geometry(ct_site, report, row["SeriesInstanceUID"])
        assert all(r.image_orientation == geometry.orientation and r.pixel_spacing == geometry.pixel_spacing
                   for r in slices)
        z = [r.image_position[2] for r in slices]
        # CT5N: slices run head to feet along n = (0, 0, -1), 2.5 mm apart; numbering rises with them
        assert np.allclose(np.diff(z), -2.5) and z[0] == pytest.approx(8.7625)
        assert [r.instance_number for r in slices] == list(range(1, 25))
        hu = np.stack([apply_modality_lut(_read(ct_site / "dicom" / r.path).pixel_array,
                                          _read(ct_site / "dicom" / r.path)) for r in slices])
        assert hu.min() < -900  # air outside the body
        lesion, tissue = hu[mask == 1].mean(), hu[(mask == 0) & (hu > -500)].mean()
        assert 20 < tissue < 80 and lesion > tissue + 25  # the mask is in geometry order


def test_npz_masks_carry_their_own_geometry(tmp_path):
    """hospital-2 (CT2's geometry, numbering against the slice order): the .npz mask is stored in
    InstanceNumber order, and its affine puts array slice a at the position of the a-th numbered file."""
    site = tmp_path / "hospital-2"
    synth_site(site, site_index=1, task="segmentation", n_studies=2, seed=3)
    report = scan_directory(site / "dicom")
    with open(site / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        assert row["mask"].endswith(".npz")
        data = np.load(site / row["mask"])
        slices = sorted((r for r in report.instances if r.series_instance_uid == row["SeriesInstanceUID"]),
                        key=lambda r: r.instance_number)
        assert str(data["frame_of_reference_uid"]) == slices[0].frame_of_reference_uid
        for a, rec in enumerate(slices):
            np.testing.assert_allclose(data["affine"] @ [a, 0, 0, 1], [*rec.image_position, 1], atol=1e-3)
        hu = np.stack([apply_modality_lut(_read(site / "dicom" / r.path).pixel_array,
                                          _read(site / "dicom" / r.path)) for r in slices])
        mask = data["mask"]
        assert hu[mask == 1].mean() > hu[(mask == 0) & (hu > -500)].mean() + 25


@pytest.mark.parametrize("index", range(len(CT_GEOMETRIES)))
def test_ct_geometries_are_those_of_real_pydicom_series(index):
    """The hard-coded geometries equal the headers of the pydicom files they name."""
    geometry = CT_GEOMETRIES[index]
    base = Path(pydicom.__file__).parent / "data" / "test_files"
    if "CT5N" in geometry.source or "CT2" in geometry.source:
        folder = base / "dicomdirtests" / geometry.source.split("dicomdirtests/")[1]
        headers = [_read(p) for p in sorted(folder.iterdir())]
        if "CT2" in geometry.source:
            headers = [h for h in headers if h.ImagePositionPatient[2] > 100]  # its contiguous part
        positions = [[float(v) for v in h.ImagePositionPatient] for h in headers]
        numbers = [int(h.InstanceNumber) for h in headers]
        first = headers[0]
    else:
        name = geometry.source.split()[-1]
        first = _read(pydicom.data.get_testdata_file(name))
        positions = numbers = None
        if "SharedFunctionalGroupsSequence" in first:
            shared = first.SharedFunctionalGroupsSequence[0]
            first.ImageOrientationPatient = shared.PlaneOrientationSequence[0].ImageOrientationPatient
            first.PixelSpacing = shared.PixelMeasuresSequence[0].PixelSpacing
            first.SliceThickness = shared.PixelMeasuresSequence[0].SliceThickness
            first.ImagePositionPatient = (first.PerFrameFunctionalGroupsSequence[0]
                                          .PlanePositionSequence[0].ImagePositionPatient)
    assert tuple(float(v) for v in first.ImageOrientationPatient) == geometry.orientation
    assert tuple(float(v) for v in first.PixelSpacing) == geometry.pixel_spacing
    assert float(first.SliceThickness) == geometry.step
    if positions is not None:
        iop = np.array(geometry.orientation)
        normal = np.cross(iop[3:], iop[:3])
        d = np.array(positions) @ normal
        order = np.argsort(d)
        assert np.allclose(np.diff(d[order]), geometry.step, atol=1e-3)
        assert positions[order[0]] == pytest.approx(list(geometry.first_position))
        rising = bool(np.all(np.diff(np.array(numbers)[order]) > 0))
        assert rising == geometry.numbering_along
    else:
        assert tuple(float(v) for v in first.ImagePositionPatient) == pytest.approx(geometry.first_position)


def test_refuses_to_overwrite(tmp_path):
    synth_consortium(tmp_path, sites=1, studies_per_site=1)
    with pytest.raises(UserError, match="--overwrite"):
        synth_consortium(tmp_path, sites=1, studies_per_site=1)
    synth_consortium(tmp_path, sites=1, studies_per_site=2, overwrite=True)
    assert len(list((tmp_path / "hospital-1" / "dicom").rglob("*.dcm"))) == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"sites": 0}, {"studies_per_site": 0}, {"task": "detection"},
     {"drift": {"hospital-9": 0.1}}, {"manufacturers": {"hospital-0": "X"}}],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(UserError):
        synth_consortium(tmp_path, **{"sites": 2, "studies_per_site": 1, **kwargs})
    assert not any(tmp_path.iterdir())  # nothing half-written


# --------------------------------------------------------------------------- reports (--reports)

def test_reports_add_files_and_change_no_existing_one(tmp_path):
    synth_site(tmp_path / "plain", site_index=2, n_studies=7, seed=9)
    synth_site(tmp_path / "reports", site_index=2, n_studies=7, seed=9, reports=True)
    plain, with_reports = _tree_digest(tmp_path / "plain"), _tree_digest(tmp_path / "reports")
    assert {k: with_reports[k] for k in plain} == plain  # images and labels.csv byte for byte
    # same seed, same bytes, SR objects included (highdicom stamps "now" unless told otherwise)
    synth_site(tmp_path / "again", site_index=2, n_studies=7, seed=9, reports=True)
    assert _tree_digest(tmp_path / "again") == with_reports
    added = sorted(set(with_reports) - set(plain))
    assert added == ["dicom/study-0003/report-0001.dcm", "dicom/study-0006/report-0001.dcm", "reports.csv",
                     "synthetic_report_truth.json"]


def test_report_matches_the_image_side_and_label(tmp_path):
    import json

    site = tmp_path / "hospital-1"
    synth_site(site, site_index=0, n_studies=40, seed=4, reports=True)
    truth = json.loads((site / "synthetic_report_truth.json").read_text())
    labels = _labels(site)
    report_rows = {}
    with open(site / "reports.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            report_rows[row["StudyInstanceUID"]] = row["findings"] + " " + row["impression"]
    checked = 0
    for path in sorted((site / "dicom").rglob("image-0001.dcm")):
        ds = _read(path)
        study, entry = str(ds.StudyInstanceUID), truth[str(ds.StudyInstanceUID)]
        opacity = entry["truth"].get("opacity")
        if labels[study] == 1:
            assert opacity in ("positive", "uncertain") and entry["placement"] is not None
            # the opacity is the brightest structure: its side of the film is the reported side
            pixels = gaussian_filter(ds.pixel_array.astype(float), 2.0)
            _row, col = np.unravel_index(np.argmax(pixels), pixels.shape)
            image_side = "right" if col < pixels.shape[1] / 2 else "left"  # PA film: patient's right on the left
            assert entry["placement"]["side"] == image_side, study
            if study in report_rows:
                assert f"{image_side} " in report_rows[study].lower()
                checked += 1
        else:
            assert opacity in ("negative", "uncertain", None) and entry["placement"] is None
    assert checked >= 5
    cases = {e["opacity_case"] for e in truth.values()}
    assert {"affirmed", "negated"} <= cases


def test_reports_only_for_radiographs(tmp_path):
    with pytest.raises(UserError, match="classification"):
        synth_site(tmp_path / "ct", site_index=0, task="segmentation", n_studies=1, reports=True)

"""Volumes assembled by geometry, on real pydicom series and header-edited copies of one.

Each case gives the correct order and spacing, checked against positions projected on the slice
normal computed here with numpy (and against highdicom's own series reader), or a refusal whose
reason and detail name the series and the measured numbers.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from ai4hi_sdk.data.assembly import assemble_volumes, decode_volume, group_by_series
from ai4hi_sdk.data.geometry import REFUSAL_REASONS
from ai4hi_sdk.data.scan import scan_directory

DICOMDIR = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT5N = DICOMDIR / "98892001" / "CT5N"


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _assemble(folder: Path, image_types=("ORIGINAL",)):
    report = scan_directory(folder)
    return assemble_volumes(group_by_series(report.instances), folder, image_types=image_types)


def _one(folder: Path, image_types=("ORIGINAL",)):
    volumes, refusals = _assemble(folder, image_types)
    assert len(volumes) + len(refusals) == 1, (volumes, refusals)
    return volumes[0] if volumes else refusals[0]


def _normal_order(paths: list[Path]) -> tuple[list[Path], float]:
    """Independent reference: files sorted by IPP . (column x row), and the mean step."""
    headers = [_read(p) for p in paths]
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[3:], iop[:3])
    d = np.array([np.dot(np.array(h.ImagePositionPatient, dtype=float), normal) for h in headers])
    order = np.argsort(d)
    return [paths[k] for k in order], float((d[order][-1] - d[order][0]) / (len(d) - 1))


def _copy_series(src: Path, dst: Path, edit=None, *, drop: tuple[int, ...] = ()) -> list[Path]:
    """Copies of a real series (files in InstanceNumber order), ``edit(ds, k)`` applied to each."""
    dst.mkdir(parents=True)
    headers = sorted((_read(p) for p in sorted(src.iterdir())), key=lambda ds: int(ds.InstanceNumber))
    out = []
    for k, ds in enumerate(headers):
        if k in drop:
            continue
        if edit is not None:
            edit(ds, k)
        path = dst / f"file{k:02d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def _stack_reference(paths: list[Path]) -> np.ndarray:
    return np.stack([apply_modality_lut(_read(p).pixel_array, _read(p)) for p in paths]).astype(np.float32)


# --------------------------------------------------------------------------- real series


def test_ct5n_ordered_along_the_normal_not_by_instance_number():
    volume = _one(CT5N)
    paths = sorted(CT5N.iterdir())
    expected, step = _normal_order(paths)
    assert [p.name for p in volume.slice_paths] == [p.name for p in expected]
    assert volume.geometry.spacing == pytest.approx((step, 0.488281, 0.488281))
    assert step == pytest.approx(2.5)
    # n = column x row = (0, 0, -1): head first; CT5N's numbering runs the same way (6..10)
    assert [int(_read(p).InstanceNumber) for p in volume.slice_paths] == [6, 7, 8, 9, 10]
    np.testing.assert_array_equal(decode_volume(volume), _stack_reference(expected))
    # highdicom's own series reader puts the voxels at the same place
    reference = hd.get_volume_from_series([_read(p) for p in paths])
    np.testing.assert_allclose(volume.geometry.affine, reference.affine, atol=1e-6)


def test_ct2_gap_of_202_mm_is_refused():
    refusal = _one(DICOMDIR / "77654033" / "CT2")
    assert refusal.reason_code == "gap"
    assert refusal.series_instance_uid in refusal.detail
    assert "202.50 mm step" in refusal.detail and "median step 1.250 mm" in refusal.detail


def test_mr700_projections_are_refused(tmp_path):
    refusal = _one(DICOMDIR / "98892003" / "MR700", image_types=None)
    assert refusal.reason_code == "not_a_slice" and "PROJECTION IMAGE" in refusal.detail
    assert refusal.series_instance_uid in refusal.detail

    def as_original(ds, k):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    _copy_series(DICOMDIR / "98892003" / "MR700", tmp_path / "mr700", as_original)
    refusal = _one(tmp_path / "mr700")
    assert refusal.reason_code == "multiple_orientations"
    assert "7 different ImageOrientationPatient values among 7 slices" in refusal.detail


def test_localizers_and_derived_images_are_refused(tmp_path):
    refusal = _one(DICOMDIR / "98892001" / "CT2N")
    assert refusal.reason_code == "not_a_slice" and "LOCALIZER" in refusal.detail

    def derived(ds, k):
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    _copy_series(CT5N, tmp_path / "derived", derived)
    refusal = _one(tmp_path / "derived")
    assert refusal.reason_code == "image_type" and "DERIVED" in refusal.detail
    assert not isinstance(_one(tmp_path / "derived", image_types=("ORIGINAL", "DERIVED")), type(refusal))


# --------------------------------------------------------------------------- header-edited copies of CT5N


@pytest.mark.parametrize("numbers", [[1, 3, 5, 2, 4], [1, 2, 3, 1, 2], [5, 4, 3, 2, 1], [10, 10, 10, 10, 10]],
                         ids=["interleaved", "restarting", "reversed", "all-equal"])
def test_instance_numbering_never_changes_the_order(tmp_path, numbers):
    original = _one(CT5N)

    def renumber(ds, k):
        ds.InstanceNumber = numbers[k]
    _copy_series(CT5N, tmp_path / "s", renumber)
    volume = _one(tmp_path / "s")
    assert volume.geometry.spacing == original.geometry.spacing
    np.testing.assert_array_equal(volume.geometry.affine, original.geometry.affine)
    np.testing.assert_array_equal(decode_volume(volume), decode_volume(original))
    positions = [float(_read(p).ImagePositionPatient[2]) for p in volume.slice_paths]
    assert positions == sorted(positions, reverse=True)  # along n = (0, 0, -1)


def test_dropped_slice_is_a_gap(tmp_path):
    _copy_series(CT5N, tmp_path / "s", drop=(2,))
    refusal = _one(tmp_path / "s")
    assert refusal.reason_code == "gap"
    assert "5.00 mm step" in refusal.detail and "median step 2.500 mm" in refusal.detail
    assert "about 1 slice(s) missing" in refusal.detail


def test_20_degree_gantry_tilt_is_refused(tmp_path):
    def tilt(ds, k):  # each slice shifted along y by its offset along z times tan(20 degrees)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (8.7625 - z) * math.tan(math.radians(20)), z]
    _copy_series(CT5N, tmp_path / "s", tilt)
    refusal = _one(tmp_path / "s")
    assert refusal.reason_code == "tilted" and "20.0 degrees" in refusal.detail


def test_sagittal_series_spacing_is_its_true_step(tmp_path):
    """An oblique sagittal stack 1 mm apart (built from a real MR file): z barely changes between
    slices, so z alone would give a spacing far from 1 mm; the normal gives the true step."""
    src = DICOMDIR / "98892003" / "MR1" / "4919"  # sagittal (0, 1, 0, 0, 0, -1)
    rotation = np.radians(12.0)  # tilt the sagittal plane about the anterior-posterior axis
    row = np.array([0.0, 1.0, 0.0])
    col = np.array([math.sin(rotation), 0.0, -math.cos(rotation)])
    normal = np.cross(col, row)
    series, frame = generate_uid(), generate_uid()
    (tmp_path / "sag").mkdir()
    order = [3, 0, 7, 1, 5, 2, 6, 4, 9, 8]  # files written out of order
    for n, k in enumerate(order):
        ds = _read(src)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series, frame
        ds.ImageOrientationPatient = [*row.round(6), *col.round(6)]
        ds.ImagePositionPatient = list((np.array([-20.0, -100.0, 60.0]) + k * 1.0 * normal).round(4))
        ds.InstanceNumber = n + 1
        ds.save_as(tmp_path / "sag" / f"{n:02d}.dcm")
    volume = _one(tmp_path / "sag")
    assert volume.geometry.spacing[0] == pytest.approx(1.0, rel=0.01)
    z = [float(_read(p).ImagePositionPatient[2]) for p in volume.slice_paths]
    assert abs(np.median(np.diff(z))) < 0.25  # what a z-only spacing would have said
    distances = [float(np.dot(_read(p).ImagePositionPatient, normal)) for p in volume.slice_paths]
    assert distances == sorted(distances)


def test_mixed_sizes_refused_with_the_series_named(tmp_path):
    def shrink_one(ds, k):
        if k == 3:
            ds.Rows = ds.Columns = 8
            ds.PixelData = ds.PixelData[: 8 * 8 * 2]
    _copy_series(CT5N, tmp_path / "s", shrink_one)
    refusal = _one(tmp_path / "s")
    assert refusal.reason_code == "mixed_sizes"
    assert refusal.series_instance_uid in refusal.detail and "8x8" in refusal.detail and "16x16" in refusal.detail


def test_duplicate_positions_and_spacing_header_mismatch(tmp_path):
    def duplicate(ds, k):
        if k == 4:
            ds.ImagePositionPatient = list(_read(sorted(CT5N.iterdir())[0]).ImagePositionPatient)
    _copy_series(CT5N, tmp_path / "dup", duplicate)
    refusal = _one(tmp_path / "dup")
    assert refusal.reason_code == "duplicate_position" and "InstanceNumber" in refusal.detail

    def wrong_spacing(ds, k):
        ds.SpacingBetweenSlices = 3.0
    _copy_series(CT5N, tmp_path / "sbs", wrong_spacing)
    refusal = _one(tmp_path / "sbs")
    assert refusal.reason_code == "spacing_mismatch" and "3 mm" in refusal.detail


def test_every_refusal_reason_is_documented():
    for code in ("gap", "tilted", "multiple_orientations", "not_a_slice", "mixed_sizes", "image_type",
                 "duplicate_position", "spacing_mismatch", "unsupported_multiframe", "irregular_spacing"):
        assert REFUSAL_REASONS[code]


def test_a_localizer_inside_a_series_is_left_out_and_the_rest_stacked(tmp_path):
    """Some exports put the scout in the axial series: it is named and left out, not the series."""
    original = _one(CT5N)

    def with_scout(ds, k):
        pass
    paths = _copy_series(CT5N, tmp_path / "s", with_scout)
    scout = _read(paths[0])
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    scout.InstanceNumber = 1
    scout.save_as(tmp_path / "s" / "scout.dcm")
    volume = _one(tmp_path / "s")
    assert volume.geometry.shape == original.geometry.shape
    np.testing.assert_array_equal(decode_volume(volume), decode_volume(original))
    (dropped,) = volume.dropped
    assert dropped.path == "scout.dcm" and dropped.reason_code == "not_a_slice"
    assert volume.series_instance_uid in dropped.detail and "LOCALIZER" in dropped.detail

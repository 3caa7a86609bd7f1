"""Enhanced multi-frame objects: every frame stacked by its functional groups, HU equal to those of
the same slices as classic files, and a clear refusal for variants that are not supported."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ai4hi_sdk.data.assembly import assemble_volumes, decode_volume, group_by_series
from ai4hi_sdk.data.scan import scan_directory

CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
_MULTIFRAME_ONLY = ("NumberOfFrames", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
                    "DimensionIndexSequence", "DimensionOrganizationSequence", "DimensionOrganizationType")


def _read(path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _volumes(folder: Path, image_types=None):
    report = scan_directory(folder)
    return assemble_volumes(group_by_series(report.instances), folder, image_types=image_types)


def _split_into_classic_files(enhanced: Path, out: Path) -> None:
    """Write each frame of an Enhanced CT as a classic CT Image Storage file (pydicom only): pixel
    data of that frame, and the frame's position, orientation, spacing and rescale as plain elements."""
    ds = _read(enhanced)
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = ds.pixel_array
    series = generate_uid()
    out.mkdir()
    for k, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        classic = copy.deepcopy(ds)
        for keyword in _MULTIFRAME_ONLY:
            if keyword in classic:
                delattr(classic, keyword)
        groups = {**{e.keyword: e for e in shared}, **{e.keyword: e for e in fg}}
        classic.SOPClassUID = classic.file_meta.MediaStorageSOPClassUID = CTImageStorage
        classic.SOPInstanceUID = classic.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        classic.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        classic.SeriesInstanceUID = series
        classic.InstanceNumber = k + 1
        classic.ImagePositionPatient = groups["PlanePositionSequence"].value[0].ImagePositionPatient
        classic.ImageOrientationPatient = groups["PlaneOrientationSequence"].value[0].ImageOrientationPatient
        classic.PixelSpacing = groups["PixelMeasuresSequence"].value[0].PixelSpacing
        classic.SliceThickness = groups["PixelMeasuresSequence"].value[0].SliceThickness
        transform = groups["PixelValueTransformationSequence"].value[0]
        classic.RescaleIntercept, classic.RescaleSlope = transform.RescaleIntercept, transform.RescaleSlope
        classic.PixelData = frames[k].tobytes()
        classic.save_as(out / f"frame{k}.dcm", enforce_file_format=True)


def test_enhanced_ct_hu_equal_those_of_the_same_slices_as_classic_files(tmp_path):
    src = Path(get_testdata_file("eCT_Supplemental.dcm"))
    (tmp_path / "enhanced").mkdir()
    (tmp_path / "enhanced" / src.name).symlink_to(src)
    _split_into_classic_files(src, tmp_path / "classic")
    # eCT_Supplemental is a DERIVED perfusion map: a job must accept DERIVED to use it at all
    (enhanced,), refused = _volumes(tmp_path / "enhanced", image_types=("ORIGINAL", "DERIVED"))
    (classic,), _ = _volumes(tmp_path / "classic", image_types=("ORIGINAL", "DERIVED"))
    assert not refused and enhanced.enhanced and not classic.enhanced
    assert enhanced.geometry.shape == classic.geometry.shape == (2, 512, 512)  # every frame, not frame 0
    assert enhanced.geometry.spacing == pytest.approx((10.0, 0.388672, 0.388672))  # not (1, 1, 1)
    np.testing.assert_allclose(enhanced.geometry.affine, classic.geometry.affine, atol=1e-6)
    hu_enhanced, hu_classic = decode_volume(enhanced), decode_volume(classic)
    np.testing.assert_array_equal(hu_enhanced, hu_classic)
    # and both equal stored value x slope + intercept read straight from the shared functional group
    ds = _read(src)
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    expected = ds.pixel_array.astype(np.float64) * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    np.testing.assert_array_equal(hu_enhanced, expected[list(enhanced.frames)])
    assert hu_enhanced.min() == -1024.0  # air, not 0: the rescale was applied


def test_enhanced_ct_is_refused_when_the_job_takes_original_images_only(tmp_path):
    src = Path(get_testdata_file("eCT_Supplemental.dcm"))
    (tmp_path / src.name).symlink_to(src)
    volumes, (refusal,) = _volumes(tmp_path, image_types=("ORIGINAL",))
    assert not volumes and refusal.reason_code == "image_type" and "DERIVED" in refusal.detail


def test_legacy_converted_enhanced_ct_equals_its_classic_series(tmp_path):
    """A real classic series, converted by highdicom into one multi-frame object, gives the same
    volume: same geometry, same HU."""
    datasets = [_read(p) for p in sorted(CT5N.iterdir())]
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        datasets, series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(),
        instance_number=1)
    (tmp_path / "mf").mkdir()
    converted.save_as(tmp_path / "mf" / "converted.dcm")
    (multi,), refused = _volumes(tmp_path / "mf", image_types=("ORIGINAL",))
    (classic,), _ = _volumes(CT5N, image_types=("ORIGINAL",))
    assert not refused and multi.enhanced and len(multi.frames) == 5
    np.testing.assert_allclose(multi.geometry.affine, classic.geometry.affine, atol=1e-6)
    np.testing.assert_array_equal(decode_volume(multi), decode_volume(classic))


def test_enhanced_mr_without_functional_groups_is_refused(tmp_path):
    src = Path(get_testdata_file("emri_small.dcm"))  # Enhanced MR SOP class, 10 frames, no functional groups
    (tmp_path / src.name).symlink_to(src)
    volumes, (refusal,) = _volumes(tmp_path)
    assert not volumes and refusal.reason_code == "unsupported_multiframe"
    assert "10 frames" in refusal.detail and refusal.series_instance_uid in refusal.detail

"""Masks matched to the image volume by frame of reference and position: DICOM SEG (written by
highdicom from a real CT series), .npz with an affine, .npy in the volume convention."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ai4hi_sdk.data.assembly import assemble_volumes, group_by_series
from ai4hi_sdk.data.masks import load_mask
from ai4hi_sdk.data.scan import scan_directory
from ai4hi_sdk.data.volumes import load_site_volume_splits
from ai4hi_sdk.errors import UserError

CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def _read(path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def ct5n():
    """CT5N's volume, and its files in InstanceNumber order with a lesion mask in that order."""
    (volume,), _ = assemble_volumes(group_by_series(scan_directory(CT5N).instances), CT5N, image_types=None)
    files = sorted(CT5N.iterdir(), key=lambda p: int(_read(p).InstanceNumber))
    mask = np.zeros((5, 16, 16), dtype=bool)
    mask[1:3, 4:9, 5:11] = True
    mask[4, 10:12, 2:4] = True  # an asymmetric blob: a flip or transpose would show
    return volume, files, mask


def _expected(volume, files, mask) -> np.ndarray:
    """The mask in the volume's slice order, by matching file names (not geometry)."""
    names = [p.name for p in files]
    return mask[[names.index(p.name) for p in volume.slice_paths]].astype(np.uint8)


def _seg(files: list[Path], mask: np.ndarray, path: Path, *, frame_of_reference: str | None = None) -> Path:
    sources = [_read(p) for p in files]
    if frame_of_reference:
        for ds in sources:
            ds.FrameOfReferenceUID = frame_of_reference
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0")
    seg.save_as(path)
    return path


def test_dicom_seg_is_placed_by_position(ct5n, tmp_path):
    volume, files, mask = ct5n
    seg = _seg(files, mask, tmp_path / "seg.dcm")
    got = load_mask(seg, volume.geometry, series="CT5N")
    np.testing.assert_array_equal(got, _expected(volume, files, mask))
    # the SEG's own frames are only the 3 slices holding a segment: placed, not stacked by index
    assert _read(seg).NumberOfFrames == 3


def test_seg_of_another_frame_of_reference_is_refused(ct5n, tmp_path):
    volume, files, mask = ct5n
    seg = _seg(files, mask, tmp_path / "seg.dcm", frame_of_reference=generate_uid())
    with pytest.raises(UserError, match="frame of reference"):
        load_mask(seg, volume.geometry, series="CT5N")


def test_npz_with_affine_is_matched_flipped_or_not(ct5n, tmp_path):
    volume, files, mask = ct5n
    expected = _expected(volume, files, mask)
    # stored in the reverse of the volume order, with the affine that says so
    affine = volume.geometry.affine.copy()
    affine[:3, 3] = (affine @ np.array([4, 0, 0, 1]))[:3]  # array slice 0 is the volume's last
    affine[:3, 0] = -affine[:3, 0]
    np.savez(tmp_path / "m.npz", mask=expected[::-1], affine=affine)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.npz", volume.geometry, series="s"), expected)
    # the same array with the volume's own affine is taken as it is: it is then the flipped mask
    np.savez(tmp_path / "n.npz", mask=expected[::-1], affine=volume.geometry.affine)
    np.testing.assert_array_equal(load_mask(tmp_path / "n.npz", volume.geometry, series="s"), expected[::-1])
    # half a voxel off the grid, or another voxel size: refused, never resampled
    shifted = volume.geometry.affine.copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 1]
    np.savez(tmp_path / "o.npz", mask=expected, affine=shifted)
    with pytest.raises(UserError, match="grid"):
        load_mask(tmp_path / "o.npz", volume.geometry, series="s")
    coarse = volume.geometry.affine.copy()
    coarse[:3, 1:3] *= 2
    np.savez(tmp_path / "p.npz", mask=expected[:, :8, :8], affine=coarse)
    with pytest.raises(UserError, match="never resampled"):
        load_mask(tmp_path / "p.npz", volume.geometry, series="s")


def test_npy_must_have_the_volume_shape(ct5n, tmp_path):
    volume, files, mask = ct5n
    np.save(tmp_path / "m.npy", mask)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.npy", volume.geometry, series="s"), mask)
    np.save(tmp_path / "bad.npy", mask[:4])
    with pytest.raises(UserError, match=r"shape \(4, 16, 16\), series s has \(5, 16, 16\)"):
        load_mask(tmp_path / "bad.npy", volume.geometry, series="s")


def test_site_with_a_seg_object_next_to_its_series(ct5n, tmp_path):
    """A SEG found by the scan in dicom/ is the mask of the series it references (no labels row);
    it is not counted as an image."""
    volume, files, mask = ct5n
    site = tmp_path / "site"
    shutil.copytree(CT5N, site / "dicom" / "ct")
    _seg(files, mask, site / "dicom" / "seg.dcm")
    (site / "labels.csv").write_text("SeriesInstanceUID,mask\n")
    splits = load_site_volume_splits(site, fractions=(1.0, 0.0, 0.0))
    assert len(splits.scan.segmentations) == 1 and splits.scan.files_read == 5
    assert splits.counts() == {"train": 1, "val": 0, "test": 0}
    np.testing.assert_array_equal(splits.train.true_mask(0), _expected(volume, files, mask))
    assert splits.train.spacings() == [(2.5, 0.488281, 0.488281)]

"""What a job trains on is declared: a labelled CR study that also holds SC, SEG, US, CT and MR
objects (real pydicom files) gives only its CR image as a training item; everything else is counted
by reason."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from ai4hi_sdk.config.job_spec import DataSpec, load_job_spec
from ai4hi_sdk.data.dataset import load_site_splits
from ai4hi_sdk.data.scan import scan_directory
from ai4hi_sdk.data.selection import EXCLUSION_REASONS, ImageSelection, select
from ai4hi_sdk.data.transforms import load_pixels

REPO = Path(__file__).resolve().parents[2]
CXR = ImageSelection.from_spec(load_job_spec(REPO / "jobs" / "cxr_classification.yaml").data)
# a real CR film (ORIGINAL), and the other objects a PACS export of the study may hold
STUDY_FILES = {"cr.dcm": "RG3_UNCR.dcm", "sc.dcm": "SC_rgb_small_odd.dcm", "seg.dcm": "liver_1frame.dcm",
               "us.dcm": "US1_UNCR.dcm", "ct.dcm": "CT_small.dcm", "mr.dcm": "MR_small.dcm",
               "cine.dcm": "color3d_jpeg_baseline.dcm"}


def _read(path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def cr_study(tmp_path_factory) -> Path:
    """One study (one StudyInstanceUID, labelled 1) of real pydicom files; every object keeps its own
    series and gets a fresh SOP Instance UID (pydicom's test files share some)."""
    site = tmp_path_factory.mktemp("cr_study")
    study = generate_uid()
    for name, source in STUDY_FILES.items():
        ds = _read(get_testdata_file(source))
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        (site / "dicom").mkdir(exist_ok=True)
        ds.save_as(site / "dicom" / name)
    (site / "labels.csv").write_text(f"StudyInstanceUID,label\n{study},1\n")
    return site


def test_chest_radiograph_job_trains_on_the_cr_image_only(cr_study):
    splits = load_site_splits(cr_study, image_size=16, augment=False, selection=CXR)
    items = [it for part in (splits.train, splits.val, splits.test) for it in part.items]
    assert [it.path.name for it in items] == ["cr.dcm"]
    report = splits.scan
    assert [s.path for s in report.segmentations] == ["seg.dcm"]  # a SEG is a label, never an image
    by_path = {e.path: e.reason_code for e in report.excluded}
    assert by_path == {"sc.dcm": "modality", "us.dcm": "modality", "ct.dcm": "modality", "mr.dcm": "modality",
                       "cine.dcm": "modality"}
    assert report.summary()["excluded_by_reason"] == {"modality": 5}
    assert "the job trains on CR, DX" in next(e.detail for e in report.excluded if e.path == "ct.dcm")


def test_without_a_declaration_every_labelled_image_would_carry_the_label(cr_study):
    """What the declaration prevents: accepting any modality and image type, every image of the study
    except the cine (multi-frame needs a choice) and the SEG becomes an item with the CR's label."""
    anything = ImageSelection(image_types=None)
    splits = load_site_splits(cr_study, image_size=16, augment=False, selection=anything)
    items = sorted(it.path.name for part in (splits.train, splits.val, splits.test) for it in part.items)
    assert items == ["cr.dcm", "ct.dcm", "mr.dcm", "sc.dcm", "us.dcm"]
    assert {e.path: e.reason_code for e in splits.scan.excluded} == {"cine.dcm": "multi_frame"}


def test_multi_frame_needs_an_explicit_choice(cr_study):
    report = scan_directory(cr_study / "dicom")
    cine = next(r for r in report.instances if r.path == "cine.dcm")
    assert cine.number_of_frames == 120
    (_, [excluded]) = select([cine], ImageSelection(image_types=None))
    assert excluded.reason_code == "multi_frame" and "120 frames" in excluded.detail
    kept, _ = select([cine], ImageSelection(image_types=None, multiframe="first_frame"))
    assert kept == [cine]
    # the first frame is what a job then trains on: pydicom's full decode, frame 0, as luminance
    full = _read(cr_study / "dicom" / "cine.dcm").pixel_array[0].astype(np.float64)
    expected = 0.299 * full[..., 0] + 0.587 * full[..., 1] + 0.114 * full[..., 2]
    np.testing.assert_allclose(load_pixels(cr_study / "dicom" / "cine.dcm"), expected, atol=1e-3)


def test_constant_images_are_skipped_with_a_reason(tmp_path):
    ds = _read(get_testdata_file("CT_small.dcm"))
    (tmp_path / "dicom").mkdir()
    ds.save_as(tmp_path / "dicom" / "real.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = np.zeros((ds.Rows, ds.Columns), dtype=np.int16).tobytes()
    ds.save_as(tmp_path / "dicom" / "blank.dcm")
    (tmp_path / "labels.csv").write_text(f"StudyInstanceUID,label\n{ds.StudyInstanceUID},0\n")
    splits = load_site_splits(tmp_path, image_size=16, augment=False, selection=ImageSelection(modalities=("CT",)))
    items = [it.path.name for part in (splits.train, splits.val, splits.test) for it in part.items]
    assert items == ["real.dcm"]
    assert [(e.path, e.reason_code) for e in splits.scan.excluded] == [("blank.dcm", "constant_image")]


def test_data_spec_defaults_equal_the_selection_defaults_and_shipped_jobs_declare_theirs():
    assert ImageSelection.from_spec(DataSpec()) == ImageSelection()
    assert CXR == ImageSelection(modalities=("CR", "DX"), sop_classes=CXR.sop_classes, image_types=("ORIGINAL",),
                                 multiframe="exclude")
    assert set(CXR.sop_classes) == {"1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"}
    seg = ImageSelection.from_spec(load_job_spec(REPO / "jobs" / "ct_segmentation.yaml").data)
    assert seg.modalities == ("CT",) and seg.multiframe == "volume" and seg.image_types == ("ORIGINAL",)
    assert set(seg.sop_classes) == {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}
    assert set(EXCLUSION_REASONS) >= {"modality", "sop_class", "image_type", "multi_frame", "constant_image"}

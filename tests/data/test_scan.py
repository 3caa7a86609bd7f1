from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import RLELossless

from ai4hi_sdk.data.scan import SKIP_REASONS, pseudonymise_patient_id, scan_directory
from ai4hi_sdk.errors import UserError


def _pydicom_read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _pydicom_decodes(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ = pydicom.dcmread(path).pixel_array
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="module")
def tree_report(pydicom_tree):
    return scan_directory(pydicom_tree)


def test_every_pydicom_file_is_read_or_skipped_once(pydicom_tree, pydicom_files, tree_report):
    report = tree_report
    all_files = sorted(p.relative_to(pydicom_tree).as_posix() for p in pydicom_tree.rglob("*")
                       if p.is_file())
    assert len(all_files) == len(pydicom_files)
    seen = ([r.path for r in report.instances] + [r.path for r in report.segmentations]
            + [r.path for r in report.report_objects] + [s.path for s in report.skipped])
    assert sorted(seen) == all_files  # each exactly once
    assert report.files_seen == len(all_files)
    assert report.files_read > 20 and report.files_skipped > 20
    assert {s.reason_code for s in report.skipped} <= set(SKIP_REASONS)
    assert all(s.detail for s in report.skipped)


@pytest.mark.parametrize(
    ("name", "reasons"),
    [
        ("MR_truncated.dcm", {"truncated"}),
        ("rtplan_truncated.dcm", {"truncated"}),
        ("README.txt", {"not_dicom"}),
        ("crayons.icc", {"not_dicom"}),
        ("zipMR.gz", {"duplicate_instance"}),  # gzipped MR_small.dcm: read, then a copy of it
        ("test1.json", {"not_dicom"}),
        ("no_meta.dcm", {"not_dicom", "no_file_meta"}),
        ("ExplVR_LitEndNoMeta.dcm", {"no_file_meta"}),
        ("ExplVR_BigEndNoMeta.dcm", {"no_file_meta"}),
        ("dicomdirtests/DICOMDIR", {"no_pixel_data"}),
        ("rtplan.dcm", {"no_pixel_data"}),
        ("waveform_ecg.dcm", {"no_pixel_data"}),
        ("badVR.dcm", {"invalid_pixel_header"}),
        ("nested_priv_SQ.dcm", {"missing_uid"}),
        ("JPEGLSNearLossless_08.dcm", {"missing_uid"}),
        ("meta_missing_tsyntax.dcm", {"missing_uid", "missing_transfer_syntax"}),
        # same SOP Instance UID as MR_small.dcm (re-encodings of one image)
        ("MR_small_padded.dcm", {"duplicate_instance"}),
        ("MR_small_bigendian.dcm", {"duplicate_instance"}),
    ],
)
def test_broken_files_skipped_with_reason(tree_report, name, reasons):
    skipped = {s.path: s for s in tree_report.skipped}
    assert name in skipped, f"{name} should be skipped"
    assert skipped[name].reason_code in reasons, skipped[name]


@pytest.mark.parametrize(
    "name",
    ["JPEG2000.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
     "JPEG-lossy.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", "examples_ybr_color.dcm"],
)
def test_compressed_files_follow_decoder_availability(tree_report, name):
    """Skipped as unsupported exactly when pydicom has no decoder for the transfer syntax."""
    path = Path(tree_report.root) / name
    ts = _pydicom_read(path).file_meta.TransferSyntaxUID
    read = {r.path for r in tree_report.instances}
    skipped = {s.path: s.reason_code for s in tree_report.skipped}
    if get_decoder(ts).is_available:
        # read, or (a broken stream the installed decoder rejects) skipped exactly when pydicom fails too
        if name not in read and skipped[name] != "duplicate_instance":  # re-encodings of one image
            assert skipped[name] == "pixel_decode_error" and not _pydicom_decodes(path), skipped[name]
    else:
        assert skipped[name] == "unsupported_transfer_syntax"
        assert not _pydicom_decodes(path)


def test_records_match_pydicom(tree_report):
    root = Path(tree_report.root)
    for rec in tree_report.instances:
        ds = _pydicom_read(root / rec.path)
        assert rec.sop_instance_uid == ds.SOPInstanceUID
        assert rec.study_instance_uid == ds.StudyInstanceUID
        assert rec.series_instance_uid == ds.SeriesInstanceUID
        assert rec.modality == ds.get("Modality", "unknown")
        assert (rec.rows, rec.columns) == (ds.Rows, ds.Columns)
        assert rec.number_of_frames == int(ds.get("NumberOfFrames", 1) or 1)
        assert rec.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert rec.manufacturer_raw == str(ds.get("Manufacturer", "")).strip()
        # Everything accepted must actually decode with pydicom, at the declared size.
        arr = ds.pixel_array
        assert arr.shape[-2 if ds.get("SamplesPerPixel", 1) == 1 else -3] == ds.Rows


def test_skipped_pixel_problems_agree_with_pydicom(tree_report):
    """Files we call truncated / undecodable / invalid are ones pydicom cannot decode either."""
    root = Path(tree_report.root)
    for s in tree_report.skipped:
        if s.reason_code in {"truncated", "unsupported_transfer_syntax", "invalid_pixel_header"}:
            if s.path == "rtplan_truncated.dcm":
                continue  # no pixel data at all
            assert not _pydicom_decodes(root / s.path), s


def test_known_values(tree_report):
    rec = {r.path: r for r in tree_report.instances}
    ct = rec["CT_small.dcm"]
    assert ct.modality == "CT" and ct.manufacturer == "GE" and ct.sex == "O"
    assert ct.age_years == 0.0 and ct.age_band == "0-17"
    ds = _pydicom_read(Path(tree_report.root) / "CT_small.dcm")
    assert ct.pixel_spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert ct.image_position == tuple(float(v) for v in ds.ImagePositionPatient)
    assert ct.patient_key == pseudonymise_patient_id(ds.PatientID)
    mr = rec["MR_small.dcm"]
    assert mr.manufacturer == "Canon/Toshiba" and mr.manufacturer_raw == "TOSHIBA_MEC"
    assert mr.sex == "F" and mr.age_band == "unknown"


def test_summaries(tree_report):
    r = tree_report
    assert sum(r.modalities.values()) == r.files_read
    assert sum(r.skipped_by_reason.values()) == r.files_skipped
    studies = r.studies
    assert sum(n for series in studies.values() for n in series.values()) == r.files_read
    # Grouping agrees with pydicom's own reading of the same files.
    expected: dict[str, dict[str, int]] = {}
    for rec in r.instances:
        ds = _pydicom_read(Path(r.root) / rec.path)
        series = expected.setdefault(ds.StudyInstanceUID, {})
        series[ds.SeriesInstanceUID] = series.get(ds.SeriesInstanceUID, 0) + 1
    assert studies == expected
    assert any(len(series) > 1 for series in studies.values())  # multi-series studies exist
    for attr, counts in r.subgroup_counts.items():
        assert sum(counts.values()) == len(studies), attr  # counted per study
    doc = json.loads(json.dumps(r.to_dict()))
    assert doc["summary"]["files_read"] == r.files_read
    assert len(doc["instances"]) == r.files_read and len(doc["skipped"]) == r.files_skipped


def test_scan_is_deterministic(pydicom_tree, tree_report):
    assert scan_directory(pydicom_tree).to_dict() == tree_report.to_dict()


def test_no_raw_patient_identifiers_in_report(consortium):
    site = consortium / "hospital-1" / "dicom"
    report = scan_directory(site)
    text = json.dumps(report.to_dict())
    first = _pydicom_read(site / report.instances[0].path)
    assert first.PatientID and first.PatientID not in text
    assert "SYNTHETIC" not in text  # PatientName
    assert all(r.patient_key and len(r.patient_key) == 16 for r in report.instances)


def test_non_dicom_and_damaged_files(tmp_path):
    src = Path(pydicom.data.get_testdata_file("MR_small.dcm"))
    good = src.read_bytes()
    (tmp_path / "good.dcm").write_bytes(good)
    (tmp_path / "notes.txt").write_text("not an image\n" * 50)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "short").write_bytes(b"DICM")
    (tmp_path / "cut_pixels.dcm").write_bytes(good[:-500])
    (tmp_path / "cut_header.dcm").write_bytes(good[:1000])
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path, tmp_path / "sub" / "loop")  # must not recurse forever
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    report = scan_directory(tmp_path)
    reasons = {s.path: s.reason_code for s in report.skipped}
    assert [r.path for r in report.instances] == ["good.dcm"]
    assert reasons == {
        "notes.txt": "not_dicom",
        "empty": "not_dicom",
        "random.bin": "not_dicom",
        "short": "not_dicom",
        "cut_pixels.dcm": "truncated",
        "cut_header.dcm": reasons["cut_header.dcm"],
        "dangling": "read_error",
    }
    assert reasons["cut_header.dcm"] in {"truncated", "no_pixel_data", "read_error"}


def test_random_cuts_never_pass_as_images(tmp_path):
    good = Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()
    cuts = np.random.default_rng(1).choice(np.arange(140, len(good) - 1), 60, replace=False)
    for n in cuts:
        (tmp_path / f"cut{n:06d}.dcm").write_bytes(good[:n])
    report = scan_directory(tmp_path)
    assert report.files_read == 0 and report.files_skipped == 60


def _rle_with_bad_segments(path: Path) -> None:
    ds = _pydicom_read(Path(pydicom.data.get_testdata_file("MR_small.dcm")))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00" * 64])  # RLE header claiming 0 segments
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_verify_pixels_catches_undecodable_data(tmp_path):
    _rle_with_bad_segments(tmp_path / "bad_rle.dcm")
    assert not _pydicom_decodes(tmp_path / "bad_rle.dcm")
    # compressed (encapsulated) data is trial-decoded even without verify_pixels
    assert scan_directory(tmp_path).skipped[0].reason_code == "pixel_decode_error"
    verified = scan_directory(tmp_path, verify_pixels=True)
    assert verified.files_read == 0
    assert verified.skipped[0].reason_code == "pixel_decode_error"


def test_verify_pixels_keeps_decodable_pydicom_files(pydicom_tree, tree_report):
    verified = scan_directory(pydicom_tree, verify_pixels=True)
    assert [r.path for r in verified.instances] == [r.path for r in tree_report.instances]


def test_missing_uid_and_duplicates(tmp_path):
    src = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    shutil.copy(src, tmp_path / "a.dcm")
    shutil.copy(src, tmp_path / "b.dcm")
    ds = _pydicom_read(src)
    del ds.SeriesInstanceUID
    ds.save_as(tmp_path / "c.dcm")
    report = scan_directory(tmp_path)
    assert [r.path for r in report.instances] == ["a.dcm"]
    skipped = {s.path: s for s in report.skipped}
    assert skipped["b.dcm"].reason_code == "duplicate_instance"
    assert "a.dcm" in skipped["b.dcm"].detail
    assert skipped["c.dcm"].reason_code == "missing_uid"
    assert "SeriesInstanceUID" in skipped["c.dcm"].detail


def test_bad_root(tmp_path):
    with pytest.raises(UserError, match="not found"):
        scan_directory(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        scan_directory(tmp_path / "file")


# --------------------------------------------------------------------------- issue 15, point 9


def test_gzipped_dicom_is_read_and_decodes_like_the_original(tmp_path):
    import gzip

    from ai4hi_sdk.data.transforms import load_pixels

    src = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    (tmp_path / "ct.dcm.gz").write_bytes(gzip.compress(src.read_bytes()))
    (tmp_path / "cut.dcm.gz").write_bytes(gzip.compress(src.read_bytes())[:-300])
    (tmp_path / "notes.txt.gz").write_bytes(gzip.compress(b"not dicom" * 40))
    report = scan_directory(tmp_path)
    assert [r.path for r in report.instances] == ["ct.dcm.gz"]
    assert report.instances[0].sop_instance_uid == _pydicom_read(src).SOPInstanceUID
    assert {s.path: s.reason_code for s in report.skipped} == {"cut.dcm.gz": "truncated", "notes.txt.gz": "not_dicom"}
    np.testing.assert_array_equal(load_pixels(tmp_path / "ct.dcm.gz"), load_pixels(src))


def test_duplicates_keep_the_uncompressed_then_lossless_copy(tmp_path):
    """pydicom-data's RG1 film in four encodings, given one SOP Instance UID as a PACS would (the test
    files number them apart); path order would pick the lossy JPEG 2000 first."""
    copies = {"a_j2k_lossy.dcm": "RG1_J2KI.dcm", "b_j2k_lossless.dcm": "RG1_J2KR.dcm",
              "c_uncompressed_from_lossy.dcm": "RG1_UNCI.dcm", "d_uncompressed.dcm": "RG1_UNCR.dcm"}
    uid = _pydicom_read(pydicom.data.get_testdata_file("RG1_UNCR.dcm")).SOPInstanceUID
    for name, source in copies.items():
        ds = _pydicom_read(pydicom.data.get_testdata_file(source))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(tmp_path / name)
    report = scan_directory(tmp_path)
    assert [r.path for r in report.instances] == ["d_uncompressed.dcm"]
    assert not report.instances[0].lossy
    details = {s.path: s.detail for s in report.skipped if s.reason_code == "duplicate_instance"}
    assert set(details) == set(copies) - {"d_uncompressed.dcm"}
    assert all("d_uncompressed.dcm" in d for d in details.values())
    assert "lossless kept over lossy" in details["a_j2k_lossy.dcm"]
    assert "uncompressed kept over compressed" in details["b_j2k_lossless.dcm"]
    assert "lossless kept over lossy" in details["c_uncompressed_from_lossy.dcm"]  # LossyImageCompression 01
    # without the uncompressed copy, the lossless JPEG 2000 wins over the lossy ones
    (tmp_path / "d_uncompressed.dcm").unlink()
    assert [r.path for r in scan_directory(tmp_path).instances] == ["b_j2k_lossless.dcm"]


def test_missing_codec_hint_names_the_packages_to_install(tmp_path):
    from pydicom.uid import HTJ2KLossless

    assert not get_decoder(HTJ2KLossless).is_available  # this environment has no HTJ2K decoder
    ds = _pydicom_read(Path(pydicom.data.get_testdata_file("MR_small_jp2klossless.dcm")))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.save_as(tmp_path / "htj2k.dcm")
    (skip,) = scan_directory(tmp_path).skipped
    assert skip.reason_code == "unsupported_transfer_syntax"
    assert skip.detail.endswith("install one: pip install pylibjpeg pylibjpeg-openjpeg"), skip.detail
    assert "High-Throughput JPEG 2000" in skip.detail


def test_jpeg2000_cut_inside_its_pixel_data_says_so(tmp_path):
    for name in ("US1_J2KR.dcm", "MR_small_jp2klossless.dcm"):
        src = Path(pydicom.data.get_testdata_file(name))
        data = src.read_bytes()
        start = _pydicom_read(src)  # where the pixel data starts: after every other element
        tell = pydicom.dcmread(src, defer_size=64).get_item("PixelData", keep_deferred=True).value_tell
        assert start.file_meta.TransferSyntaxUID.is_compressed
        (tmp_path / name).write_bytes(data[: tell + (len(data) - tell) // 2])
    for skip in scan_directory(tmp_path).skipped:
        assert skip.reason_code == "truncated"
        assert skip.detail.startswith("file ends inside the compressed pixel data"), skip
        assert "file meta" not in skip.detail


def test_one_bit_seg_is_a_mask_not_an_image(pydicom_tree, tree_report):
    segs = {s.path: s for s in tree_report.segmentations}
    assert "liver_1frame.dcm" in segs and "liver_1frame.dcm" not in {r.path for r in tree_report.instances}
    seg = segs["liver_1frame.dcm"]
    ds = _pydicom_read(Path(pydicom_tree) / "liver_1frame.dcm")
    assert ds.BitsAllocated == 1 and ds.Modality == "SEG"
    assert seg.segmentation_type == ds.SegmentationType and seg.segments == len(ds.SegmentSequence)
    assert seg.referenced_series_uids == tuple(sorted(
        {item.SeriesInstanceUID for item in ds.ReferencedSeriesSequence}))
    assert tree_report.summary()["segmentation_objects"] == len(tree_report.segmentations) >= 1
    assert "SEG" not in tree_report.modalities


def test_records_carry_geometry_and_image_type(tree_report):
    rec = {r.path: r for r in tree_report.instances}
    ct = rec["CT_small.dcm"]
    ds = _pydicom_read(Path(tree_report.root) / "CT_small.dcm")
    assert ct.image_orientation == tuple(float(v) for v in ds.ImageOrientationPatient)
    assert ct.image_type == tuple(ds.ImageType) and ct.frame_of_reference_uid == ds.FrameOfReferenceUID
    assert ct.slice_thickness == float(ds.SliceThickness) and not ct.constant and not ct.enhanced

"""Reports as site data: reports.csv (RIS exports), DICOM SR objects (real pydicom files and the
synthetic ones written by pydicom and highdicom), and the coverage join."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ai4hi_sdk.data.reports import (REPORTS_FILE, join_reports, load_report_csv, load_site_reports,
                                    read_sr_report)
from ai4hi_sdk.data.report_synth import FindingPlacement, synthetic_report
from ai4hi_sdk.data.scan import scan_directory
from ai4hi_sdk.data.synth import SYNTHETIC_REPORT_TRUTH, synth_site
from ai4hi_sdk.errors import ConfigError

UID_A, UID_B, UID_C = "1.2.3.4.100", "1.2.3.4.200", "1.2.3.4.300"


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def _read(path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


# --------------------------------------------------------------------------- reports.csv

def test_csv_with_findings_and_impression_columns(tmp_path):
    path = _write(tmp_path / "r.csv", "StudyInstanceUID,Findings,Impression\n"
                                      f"{UID_A},No effusion.,Normal.\n"
                                      f'{UID_B},"Round opacity,\nright upper zone.",Right lung nodule.\n')
    manifest = load_report_csv(path)
    assert manifest.key_level == "study" and manifest.key_column == "StudyInstanceUID"
    assert manifest.reports[UID_A].findings == "No effusion." and manifest.reports[UID_A].impression == "Normal."
    # a quoted cell spanning two lines stays one cell
    assert manifest.reports[UID_B].findings == "Round opacity,\nright upper zone."
    assert manifest.reports[UID_B].text == "FINDINGS: Round opacity,\nright upper zone.\nIMPRESSION: Right lung nodule."
    assert manifest.problems == []


def test_csv_with_one_text_column_semicolons_and_excel_bom(tmp_path):
    path = _write(tmp_path / "r.csv", f"Study UID;Report Text\n{UID_A};FINDINGS: clear.\n", encoding="utf-8-sig")
    manifest = load_report_csv(path)
    assert manifest.text_columns == ["Report Text"]
    assert manifest.reports[UID_A].other == "FINDINGS: clear." and manifest.reports[UID_A].text == "FINDINGS: clear."


def test_csv_row_problems_are_recorded_not_fatal(tmp_path):
    path = _write(tmp_path / "r.csv", "StudyInstanceUID,report\n"
                                      f"{UID_A},alpha report\n"
                                      f"{UID_A},beta report\n"      # duplicate: first kept
                                      f"{UID_B},   \n"              # empty report
                                      ",orphan text\n"              # no key
                                      "1.23E+45,spreadsheet mangled\n")
    manifest = load_report_csv(path)
    kinds = sorted(p.kind for p in manifest.problems)
    assert kinds == ["blank_key", "duplicate_key", "empty_report", "invalid_uid"]
    assert manifest.reports[UID_A].other == "alpha report"
    assert manifest.empty_keys == {UID_B} and manifest.duplicate_keys == {UID_A}
    # problems say where and what, never the report's text
    assert not any(word in p.detail for p in manifest.problems for word in ("alpha", "beta", "orphan", "mangled"))


@pytest.mark.parametrize(("text", "field"), [
    ("", "<file>"),
    ("PatientName,report\nX,y\n", "<header>"),
    (f"StudyInstanceUID,label\n{UID_A},1\n", "<header>"),
])
def test_csv_errors_name_file_and_field(tmp_path, text, field):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ConfigError) as info:
        load_report_csv(path)
    assert str(path) in str(info.value) and field in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_report_csv(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- SR objects

def test_basic_text_sr_from_pydicom_reads_report_text_not_observer_context():
    report = read_sr_report(Path(get_testdata_file("reportsi.dcm")))
    # the one CONTAINS text item; "Enter text" also sits in a HAS OBS CONTEXT item (organisation): not read twice
    assert (report.findings, report.impression, report.other) == ("", "", "Enter text")


def test_comprehensive_sr_from_pydicom_keeps_contained_text_only():
    report = read_sr_report(Path(get_testdata_file("test-SR.dcm")))
    # CONTAINS text items in document order; INFERRED FROM and HAS CONCEPT MOD texts are not the narrative
    assert report.other.split("\n") == ["A mass of", "was detected.", "A mass of", "was detected.",
                                        "Sample Text", "A", "B", "C"]
    assert "Inferred" not in report.text and "Sample Text 2" not in report.text


def test_unreadable_sr_raises_value_error(tmp_path):
    src = Path(get_testdata_file("reportsi.dcm"))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(src.read_bytes()[:400])
    with pytest.raises(ValueError):
        read_sr_report(cut)


def _study_folder(tmp_path) -> tuple[Path, str]:
    """A real CT image and real SR objects rewritten into its study."""
    root = tmp_path / "dicom"
    root.mkdir()
    image = root / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), image)
    study = str(_read(image).StudyInstanceUID)
    return root, study


def _sr_into(study: str, name: str, dest: Path, **changes) -> None:
    ds = _read(get_testdata_file(name))
    ds.StudyInstanceUID = study
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(dest)


def test_scan_counts_sr_objects_as_reports_not_images(tmp_path):
    root, study = _study_folder(tmp_path)
    _sr_into(study, "reportsi.dcm", root / "sr1.dcm")
    scan = scan_directory(root)
    assert [r.path for r in scan.report_objects] == ["sr1.dcm"]
    record = scan.report_objects[0]
    assert record.study_instance_uid == study and record.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.11"
    assert (record.completion_flag, record.verification_flag) == ("PARTIAL", "UNVERIFIED")
    assert scan.files_read == 1 and scan.files_seen == 2 and scan.summary()["report_objects"] == 1
    assert not scan.skipped


def test_join_prefers_final_sr_then_csv_and_counts_duplicates(tmp_path):
    root, study = _study_folder(tmp_path)
    _sr_into(study, "reportsi.dcm", root / "draft.dcm")                     # PARTIAL / UNVERIFIED
    _sr_into(study, "test-SR.dcm", root / "final.dcm")                      # COMPLETE / VERIFIED
    csv_path = _write(tmp_path / REPORTS_FILE, f"StudyInstanceUID,report\n{study},RIS text\n{UID_C},elsewhere\n")
    join = join_reports(scan_directory(root), load_report_csv(csv_path))
    assert join.reports[study].source == "SR final.dcm"
    assert join.duplicate_studies == [study] and join.extra_keys == [UID_C]
    assert join.summary()["from_sr"] == 1 and join.summary()["with_report"] == 1
    # without the final SR, the RIS row wins over a draft SR
    (root / "final.dcm").unlink()
    join = join_reports(scan_directory(root), load_report_csv(csv_path))
    assert join.text(study) == "RIS text" and join.summary()["from_csv"] == 1


def test_missing_empty_and_unreadable_reports_are_counted_not_fatal(tmp_path):
    root, study = _study_folder(tmp_path)
    # a second study with an image, whose only report row is empty
    other = _read(get_testdata_file("MR_small.dcm"))
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "mr.dcm")
    third = root / "third"
    third.mkdir()
    rt = _read(get_testdata_file("CT_small.dcm"))
    rt.StudyInstanceUID, rt.SOPInstanceUID = UID_B, "1.2.3.4.201"
    rt.file_meta.MediaStorageSOPInstanceUID = rt.SOPInstanceUID
    rt.save_as(third / "ct2.dcm")
    broken = root / "broken_sr.dcm"
    _sr_into(UID_B, "reportsi.dcm", broken)
    broken.write_bytes(broken.read_bytes()[:-60])  # cut inside its content: the scan skips it as truncated
    hollow = _read(get_testdata_file("reportsi.dcm"))
    hollow.StudyInstanceUID, hollow.SOPInstanceUID = UID_B, "1.2.3.4.202"
    hollow.file_meta.MediaStorageSOPInstanceUID = hollow.SOPInstanceUID
    del hollow.ContentSequence  # a valid file, but no report in it
    hollow.save_as(root / "hollow_sr.dcm")
    csv_path = _write(tmp_path / REPORTS_FILE, f"StudyInstanceUID,findings,impression\n"
                                               f"{study},Clear lungs.,Normal.\n{other.StudyInstanceUID}, , \n")
    scan = scan_directory(root)
    assert {s.path: s.reason_code for s in scan.skipped} == {"broken_sr.dcm": "truncated"}
    join = join_reports(scan, load_report_csv(csv_path))
    summary = join.summary()
    assert summary["studies"] == 3 and summary["with_report"] == 1
    assert join.empty_studies == [str(other.StudyInstanceUID)]
    assert join.missing_studies == [UID_B]
    assert [(p.kind, p.where) for p in join.problems] == [("empty_report", "reports.csv row ending on line 3"),
                                                          ("unreadable_sr", "SR hollow_sr.dcm")]
    assert summary["without_report"] + summary["empty_report"] + summary["with_report"] == 3
    json.dumps(join.to_dict())  # counts and UIDs: serialisable, and no text in it
    assert "Clear lungs" not in json.dumps(join.to_dict())


def test_accession_number_keyed_export(tmp_path):
    root, study = _study_folder(tmp_path)
    ds = _read(root / "ct.dcm")
    ds.AccessionNumber = "ACC-0042"
    ds.save_as(root / "ct.dcm")
    csv_path = _write(tmp_path / REPORTS_FILE, "AccessionNumber,impression\nACC-0042,No acute findings.\nACC-9,x\n")
    manifest = load_report_csv(csv_path)
    assert manifest.key_level == "accession"
    join = join_reports(scan_directory(root), manifest)
    assert join.text(study) == "IMPRESSION: No acute findings."
    assert join.extra_keys == ["ACC-9"]
    assert "ACC-0042" not in json.dumps(scan_directory(root).to_dict())  # the scan keeps no accession number


# --------------------------------------------------------------------------- synthetic reports

@pytest.fixture(scope="module")
def report_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("reports") / "hospital-1"
    synth_site(site, site_index=0, n_studies=18, seed=7, reports=True)
    return site


def test_synthetic_reports_round_trip_through_csv_and_sr(report_site):
    """Every study's report, read back from reports.csv or its SR object, is the generator's text."""
    truth = json.loads((report_site / SYNTHETIC_REPORT_TRUTH).read_text())
    scan = scan_directory(report_site / "dicom")
    join = load_site_reports(report_site, scan)
    assert join.summary()["with_report"] == 18 and join.summary()["problems"] == 0
    assert (join.summary()["from_csv"], join.summary()["from_sr"]) == (12, 6)
    classes = {r.sop_class_uid for r in scan.report_objects}
    assert classes == {"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",
                       "1.2.840.10008.5.1.4.1.1.88.33"}  # Basic Text (pydicom), Enhanced and Comprehensive (highdicom)
    by_study = {r.study_instance_uid: int(Path(r.path).parts[0].split("-")[1]) - 1 for r in scan.instances}
    for study, entry in truth.items():
        placement = entry["placement"] and FindingPlacement(**entry["placement"])
        expected = synthetic_report(np.random.default_rng([7, 0, by_study[study], 0x5E9027]), placement)
        report = join.reports[study]
        assert (report.findings, report.impression) == (expected.findings, expected.impression), study
        assert report.source.startswith("SR" if entry["channel"] != "csv" else "reports.csv")


def test_single_column_export_site_reads_the_same(tmp_path):
    site = tmp_path / "hospital-2"
    synth_site(site, site_index=1, n_studies=6, seed=7, reports=True)
    manifest = load_report_csv(site / REPORTS_FILE)
    assert manifest.text_columns == ["report_text"]
    join = load_site_reports(site)
    assert join.summary()["with_report"] == 6
    assert all(r.text.startswith("FINDINGS: ") and "\nIMPRESSION: " in r.text for r in join.reports.values())

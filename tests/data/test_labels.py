from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ai4hi_sdk.data.labels import join_labels, load_label_manifest
from ai4hi_sdk.data.scan import scan_directory
from ai4hi_sdk.errors import ConfigError

A = "1.2.826.0.1.3680043.8.498.1"
B = "1.2.826.0.1.3680043.8.498.2"
C = "1.2.826.0.1.3680043.8.498.3"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


@pytest.mark.parametrize(
    ("header", "level"),
    [
        ("StudyInstanceUID,label", "study"),
        ("studyinstanceuid,Label", "study"),
        ("Study Instance UID,LABEL", "study"),
        ("study_uid,label", "study"),
        ("SeriesInstanceUID,label", "series"),
        ("SOPInstanceUID,label", "sop"),
        # several key columns: the most specific wins
        ("StudyInstanceUID,SOPInstanceUID,label", "sop"),
    ],
)
def test_key_column_detection(tmp_path, header, level):
    n_keys = header.count(",")
    row = ",".join([A] * n_keys + ["1"])
    m = load_label_manifest(write(tmp_path / "l.csv", f"{header}\n{row}\n"))
    assert m.key_level == level
    assert m.labels == {A: "1"}
    assert m.problems == []


def test_semicolon_bom_and_whitespace(tmp_path):
    path = write(tmp_path / "l.csv", f"StudyInstanceUID;label\n {A} ; pneumonia \n{B};normal\n\n",
                 encoding="utf-8-sig")
    m = load_label_manifest(path)
    assert m.key_column == "StudyInstanceUID"
    assert m.labels == {A: "pneumonia", B: "normal"}


def test_explicit_columns(tmp_path):
    path = write(tmp_path / "l.csv", f"SeriesInstanceUID,StudyInstanceUID,finding\n{A},{B},1\n")
    m = load_label_manifest(path, key_column="studyinstanceuid", label_column="Finding")
    assert (m.key_level, m.label_column) == ("study", "finding")
    assert m.labels == {B: "1"}


def test_duplicates_blanks_and_bad_uids_are_problems_not_errors(tmp_path):
    path = write(
        tmp_path / "l.csv",
        "StudyInstanceUID,label\n"
        f"{A},1\n{A},1\n{A},0\n{B},\n,1\n1.23E+45,0\n{C},0\n",
    )
    m = load_label_manifest(path)
    assert m.labels == {A: "1", C: "0", "1.23E+45": "0"}  # first row of a duplicate wins
    kinds = [(p.row, p.kind) for p in m.problems]
    assert kinds == [
        (3, "duplicate_key"), (4, "duplicate_key"), (5, "blank_label"), (6, "blank_key"),
        (7, "invalid_uid"),
    ]
    assert "conflicting" in m.problems[1].detail and "conflicting" not in m.problems[0].detail
    assert m.duplicates == [A]


@pytest.mark.parametrize(
    ("content", "kwargs", "field"),
    [
        (None, {}, "<file>"),
        ("", {}, "<file>"),
        ("AccessionNumber,label\n123,1\n", {}, "<header>"),
        (f"StudyInstanceUID,diagnosis\n{A},1\n", {}, "label"),
        (f"StudyInstanceUID,label\n{A},1\n", {"key_column": "SeriesInstanceUID"},
         "SeriesInstanceUID"),
        (f"AccessionNumber,label\n{A},1\n", {"key_column": "AccessionNumber"}, "AccessionNumber"),
    ],
)
def test_config_errors(tmp_path, content, kwargs, field):
    path = tmp_path / "labels.csv"
    if content is not None:
        write(path, content)
    with pytest.raises(ConfigError) as info:
        load_label_manifest(path, **kwargs)
    assert info.value.file == str(path)
    assert [f for f, _ in info.value.problems] == [field]


def _site_labels(site: Path) -> list[dict[str, str]]:
    with open(site / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_join_full_coverage(consortium):
    site = consortium / "hospital-2"
    report = scan_directory(site / "dicom")
    join = join_labels(report, load_label_manifest(site / "labels.csv"))
    assert join.coverage == 1.0
    assert not (join.missing_instances or join.missing_studies or join.extra_keys)
    by_study = {r["StudyInstanceUID"]: r["label"] for r in _site_labels(site)}
    for rec in report.instances:
        assert join.labels[rec.sop_instance_uid] == by_study[rec.study_instance_uid]


def test_join_reports_missing_extra_and_duplicates(consortium, tmp_path):
    site = consortium / "hospital-1"
    rows = _site_labels(site)
    dropped = rows[0]["StudyInstanceUID"]
    lines = ["StudyInstanceUID,label"] + [f"{r['StudyInstanceUID']},{r['label']}" for r in rows[1:]]
    lines += [f"{rows[1]['StudyInstanceUID']},{rows[1]['label']}", f"{A},1"]
    manifest = load_label_manifest(write(tmp_path / "l.csv", "\n".join(lines) + "\n"))
    report = scan_directory(site / "dicom")
    join = join_labels(report, manifest)
    assert join.missing_studies == [dropped]
    assert len(join.missing_instances) == 1
    assert join.extra_keys == [A]
    assert join.duplicates == [rows[1]["StudyInstanceUID"]]
    assert join.coverage == pytest.approx((len(rows) - 1) / len(rows))
    summary = join.to_dict()["summary"]
    assert summary["missing_studies"] == 1 and summary["extra_keys"] == 1
    assert summary["duplicates"] == 1


def test_study_and_series_labels_cover_every_slice(ct_site, tmp_path):
    report = scan_directory(ct_site / "dicom")
    studies = report.studies
    study = sorted(studies)[0]
    csv_path = write(tmp_path / "l.csv", f"StudyInstanceUID,label\n{study},1\n")
    manifest = load_label_manifest(csv_path)
    join = join_labels(report, manifest)
    n_slices = sum(studies[study].values())
    assert n_slices == 24
    assert len(join.labels) == n_slices
    assert join.coverage == pytest.approx(1 / len(studies))
    # the site's own manifest is keyed by series, with a mask path as label
    series_join = join_labels(report, load_label_manifest(ct_site / "labels.csv",
                                                          label_column="mask"))
    assert series_join.key_level == "series" and series_join.coverage == 1.0


def test_sop_level_join(consortium, tmp_path):
    report = scan_directory(consortium / "hospital-3" / "dicom")
    first = report.instances[0]
    manifest = load_label_manifest(
        write(tmp_path / "l.csv", f"SOPInstanceUID,label\n{first.sop_instance_uid},1\n")
    )
    join = join_labels(report, manifest)
    assert join.labels == {first.sop_instance_uid: "1"}
    assert len(join.missing_instances) == report.files_read - 1

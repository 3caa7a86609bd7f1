"""``ai4hi data scan|synth`` through the real entry point (``ai4hi_sdk.cli.main.main``)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pydicom
import pytest

from ai4hi_sdk.cli import main as cli_main


@pytest.fixture(autouse=True)
def _only_existing_groups(monkeypatch):
    # The data CLI must not depend on other command groups being written yet.
    groups = tuple(g for g in cli_main.COMMAND_GROUPS
                   if importlib.util.find_spec(f"ai4hi_sdk.cli.{g}") is not None)
    monkeypatch.setattr(cli_main, "COMMAND_GROUPS", groups)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_synth")
    assert cli_main.main(["data", "synth", str(root), "--sites", "2", "--studies-per-site", "6",
                          "--seed", "3"]) == 0
    return root


def test_synth_writes_sites_and_summary(tmp_path, capsys):
    rc = cli_main.main(["data", "synth", str(tmp_path), "--sites", "3", "--studies-per-site", "4",
                        "--drift-site", "hospital-3", "--drift-intensity", "0.2"])
    out = capsys.readouterr().out
    assert rc == 0
    for name, vendor in [("hospital-1", "GE MEDICAL SYSTEMS"), ("hospital-2", "SIEMENS"),
                         ("hospital-3", "Philips Medical Systems")]:
        assert name in out and vendor in out
        assert len(list((tmp_path / name / "dicom").rglob("*.dcm"))) == 4
        assert (tmp_path / name / "labels.csv").is_file()
    assert "+0.20" in out


def test_synth_refuses_overwrite_then_overwrites(synth_root, tmp_path, capsys):
    args = ["data", "synth", str(tmp_path), "--sites", "1", "--studies-per-site", "2"]
    assert cli_main.main(args) == 0
    capsys.readouterr()
    assert cli_main.main(args) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert cli_main.main(args + ["--overwrite", "--task", "segmentation"]) == 0
    assert (tmp_path / "hospital-1" / "masks").is_dir()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--drift-site", "hospital-7", "--drift-intensity", "0.1"], "hospital-7"),
        (["--drift-intensity", "0.1"], "--drift-site"),
        (["--drift-site", "hospital-1"], "--drift-intensity"),
        (["--studies-per-site", "0"], "studies-per-site"),
    ],
)
def test_synth_user_errors(tmp_path, capsys, extra, message):
    rc = cli_main.main(["data", "synth", str(tmp_path), "--sites", "2", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert not any(tmp_path.iterdir())


def test_scan_human_summary_with_labels(synth_root, capsys):
    site = synth_root / "hospital-2"
    rc = cli_main.main(["data", "scan", str(site / "dicom"), "--labels", str(site / "labels.csv")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "read (images)" in out and "Siemens" in out and "DX" in out
    assert "100.0 %" in out and "Labels (keyed by study UID)" in out


def test_scan_json(synth_root, capsys):
    site = synth_root / "hospital-1"
    rc = cli_main.main(["data", "scan", str(site), "--labels", str(site / "labels.csv"),
                        "--json", "--verify-pixels"])
    out = capsys.readouterr().out
    assert rc == 0 and "\x1b[" not in out
    doc = json.loads(out)
    assert doc["verify_pixels"] is True
    assert doc["summary"]["files_read"] == 6
    assert doc["skipped"] == [{"path": "labels.csv", "reason_code": "not_dicom",
                               "detail": doc["skipped"][0]["detail"]}]
    assert doc["labels"]["summary"]["coverage"] == 1.0
    assert len(doc["instances"]) == 6 and len(doc["studies"]) == 6


def test_scan_broken_files_lists_reasons_without_traceback(tmp_path, capsys):
    for name in ("MR_small.dcm", "MR_truncated.dcm", "rtplan.dcm", "JPEG2000.dcm"):
        os.symlink(pydicom.data.get_testdata_file(name), tmp_path / name)
    (tmp_path / "notes.txt").write_text("[bold]not dicom[/bold]\n")
    (tmp_path / "empty").write_bytes(b"")
    rc = cli_main.main(["data", "scan", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 0 and "Traceback" not in captured.out + captured.err
    for text in ("MR_truncated.dcm", "truncated", "rtplan.dcm", "no_pixel_data", "notes.txt",
                 "not_dicom", "Skipped files"):
        assert text in captured.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "scan", "{tmp}/does-not-exist"], "not found"),
        (["data", "scan", "{tmp}", "--labels", "{tmp}/nope.csv"], "label file not found"),
    ],
)
def test_scan_user_errors(tmp_path, capsys, args, message):
    rc = cli_main.main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_scan_bad_manifest_is_config_error(synth_root, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("PatientName,label\nDOE^JOHN,1\n")
    rc = cli_main.main(["data", "scan", str(synth_root / "hospital-1"), "--labels", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "no key column" in err


def test_scan_with_a_job_shows_what_it_leaves_out_and_refuses(tmp_path, capsys):
    """A folder with pydicom's CT2 (a 202 mm gap), CT5N (a volume) and MR700 (projections), scanned
    for the segmentation job: MR is left out by modality, CT2 refused as a volume naming the gap."""
    import shutil

    base = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    for series in ("77654033/CT2", "98892001/CT5N", "98892003/MR700"):
        shutil.copytree(base / series, tmp_path / series.replace("/", "_"))
    job = Path(__file__).resolve().parents[2] / "jobs" / "ct_segmentation.yaml"
    assert cli_main.main(["data", "scan", str(tmp_path), "--job", str(job), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["excluded_by_reason"] == {"modality": 7}
    assert doc["summary"]["series_refused_by_reason"] == {"gap": 1}
    assert "202.50 mm step" in doc["refused_series"][0]["detail"]
    assert cli_main.main(["data", "scan", str(tmp_path), "--job", str(job)]) == 0
    out = capsys.readouterr().out
    assert "Series refused as volumes" in out and "gap" in out and "Left out by the job" in out


def test_synth_reports_and_scan_shows_report_coverage_and_weak_labels(tmp_path, capsys):
    root = tmp_path / "sites"
    assert cli_main.main(["data", "synth", str(root), "--sites", "1", "--studies-per-site", "9", "--reports"]) == 0
    assert "reports.csv" in capsys.readouterr().out
    site = root / "hospital-1"
    # a site's export misses one study's report and repeats another's
    lines = (site / "reports.csv").read_text().splitlines(keepends=True)
    body = "".join(lines[0:1] + lines[2:] + lines[-1:])
    (site / "reports.csv").write_text(body)
    job = tmp_path / "job.yaml"
    job.write_text("name: weak\ndata:\n  labels_from: reports\n  report_finding: opacity\n"
                   "  labeler_version: ai4hi-negex-1\n")
    args = ["data", "scan", str(site / "dicom"), "--reports", str(site / "reports.csv"), "--job", str(job)]
    assert cli_main.main(args + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    summary = doc["reports"]["summary"]
    assert (summary["studies"], summary["with_report"], summary["without_report"]) == (9, 8, 1)
    assert summary["duplicate_reports"] == 1 and summary["from_sr"] == 3
    assert doc["summary"]["report_objects"] == 3 and doc["summary"]["files_skipped"] == 0
    assert doc["weak_labels"]["labelled_studies"] + doc["weak_labels"]["dropped_uncertain"] == 8
    text = (site / "reports.csv").read_text()
    sentence = text.splitlines()[1].split(",", 1)[1].split(".")[0].strip('"')
    assert len(sentence) > 8 and sentence not in json.dumps(doc)  # the scan shows counts, never report text
    assert cli_main.main(args) == 0
    out = capsys.readouterr().out
    assert "studies without a report" in out and "8 / 9" in out and "Weak labels: 'opacity'" in out
    assert sentence not in out


def test_scan_counts_sr_reports_without_a_csv_and_refuses_a_missing_one(tmp_path, capsys):
    assert cli_main.main(["data", "synth", str(tmp_path), "--sites", "1", "--studies-per-site", "3", "--reports"]) == 0
    capsys.readouterr()
    assert cli_main.main(["data", "scan", str(tmp_path / "hospital-1" / "dicom"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["reports"]["summary"]
    assert (summary["with_report"], summary["from_sr"], summary["without_report"]) == (1, 1, 2)
    assert cli_main.main(["data", "scan", str(tmp_path), "--reports", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert "report file not found" in err and "Traceback" not in err
    assert cli_main.main(["data", "synth", str(tmp_path / "ct"), "--sites", "1", "--task", "segmentation",
                          "--reports"]) == 2
    assert "--task classification" in capsys.readouterr().err

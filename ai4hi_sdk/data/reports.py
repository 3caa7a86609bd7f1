"""Radiology reports as site data: a RIS export (``reports.csv``) and DICOM SR objects.

Hospitals keep a study's report next to its images, as a row of a RIS export keyed by the study's
StudyInstanceUID or AccessionNumber, or as a DICOM Structured Report (Basic Text, Enhanced or
Comprehensive SR) in the study. :func:`load_report_csv` reads the export, :func:`read_sr_report`
the narrative of an SR object (its TEXT content items, walked through CONTAINS relationships with
pydicom; observer names and other context items are never read), and :func:`join_reports` gives
every scanned study its report and counts the coverage: studies with and without one, empty
reports, duplicates, rows matching no study. Nothing about the join is fatal, it is reported.

Privacy: a report is patient data. The texts live in memory at the site only; everything this
module reports (``summary()``, ``to_dict()``, problems) holds counts, UIDs, row numbers and file
paths, never text. An accession number is read only to join, never stored.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ai4hi_sdk.data.scan import ReportObjectRecord, ScanReport
from ai4hi_sdk.errors import ConfigError

REPORTS_FILE = "reports.csv"
ReportKeyLevel = Literal["study", "accession"]

# Normalised header -> meaning. A study UID key wins over an accession number when both are present.
_KEY_ALIASES: tuple[tuple[ReportKeyLevel, tuple[str, ...]], ...] = (
    ("study", ("studyinstanceuid", "studyuid")),
    ("accession", ("accessionnumber", "accession", "accessionno", "accno")),
)
_FINDINGS = ("findings", "finding")
_IMPRESSION = ("impression", "impressions", "conclusion", "conclusions")
_TEXT = ("report", "reporttext", "text", "narrative", "reportbody", "body")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# SR concept names (lower case, substrings) that mark a section
_IMPRESSION_NAMES = ("impression", "conclusion", "summary")
_FINDINGS_NAMES = ("finding",)


@dataclass(frozen=True)
class Report:
    """One study's report. ``source`` says where it came from (``reports.csv row 7``,
    ``SR dicom/study-1/report.dcm``); ``other`` holds text outside a findings / impression section
    (a one-column export, an SR's unsectioned text)."""

    findings: str
    impression: str
    other: str
    source: str

    @property
    def empty(self) -> bool:
        return not (self.findings.strip() or self.impression.strip() or self.other.strip())

    @property
    def text(self) -> str:
        """The whole report as one string: ``FINDINGS: ...``, ``IMPRESSION: ...`` lines, then the rest."""
        parts = []
        if self.findings.strip():
            parts.append(f"FINDINGS: {self.findings.strip()}")
        if self.impression.strip():
            parts.append(f"IMPRESSION: {self.impression.strip()}")
        if self.other.strip():
            parts.append(self.other.strip())
        return "\n".join(parts)


@dataclass(frozen=True)
class ReportProblem:
    """A non-fatal problem: ``where`` is ``reports.csv row N`` or an SR file's path (never text)."""

    where: str
    kind: str  # blank_key | invalid_uid | duplicate_key | empty_report | unreadable_sr | unknown_accession
    key: str
    detail: str


@dataclass
class ReportManifest:
    """Rows of a ``reports.csv``: ``reports`` maps key -> the first non-empty report of that key;
    ``empty_keys`` the keys that only had empty rows; duplicates and other row problems in
    ``problems``."""

    path: str
    key_column: str
    key_level: ReportKeyLevel
    text_columns: list[str]
    reports: dict[str, Report] = field(default_factory=dict)
    empty_keys: set[str] = field(default_factory=set)
    duplicate_keys: set[str] = field(default_factory=set)
    problems: list[ReportProblem] = field(default_factory=list)


@dataclass
class ReportJoin:
    """Reports matched to the scanned studies.

    ``reports`` maps StudyInstanceUID -> the study's report (non-empty; of several, see
    :func:`join_reports`). ``n_studies`` counts the studies holding images.
    """

    reports: dict[str, Report]
    n_studies: int
    missing_studies: list[str]
    empty_studies: list[str]
    duplicate_studies: list[str]
    extra_keys: list[str]
    sources: dict[str, int]
    problems: list[ReportProblem]

    def text(self, study_instance_uid: str) -> str | None:
        """The study's report as one string (None: no non-empty report)."""
        report = self.reports.get(study_instance_uid)
        return report.text if report is not None else None

    @property
    def coverage(self) -> float:
        return len(self.reports) / self.n_studies if self.n_studies else 0.0

    def summary(self) -> dict[str, Any]:
        """Counts only."""
        return {
            "studies": self.n_studies,
            "with_report": len(self.reports),
            "without_report": len(self.missing_studies),
            "empty_report": len(self.empty_studies),
            "duplicate_reports": len(self.duplicate_studies),
            "coverage": round(self.coverage, 4),
            "from_csv": self.sources.get("csv", 0),
            "from_sr": self.sources.get("sr", 0),
            "keys_matching_no_study": len(self.extra_keys),
            "problems": len(self.problems),
        }

    def to_dict(self) -> dict[str, Any]:
        """Counts and UIDs (no report text)."""
        return {
            "summary": self.summary(),
            "missing_studies": self.missing_studies,
            "empty_studies": self.empty_studies,
            "duplicate_studies": self.duplicate_studies,
            "extra_keys": self.extra_keys,
            "problems": [asdict(p) for p in self.problems],
        }


# --------------------------------------------------------------------------- reports.csv

def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_report_csv(path: Path, *, key_column: str | None = None) -> ReportManifest:
    """Read a RIS report export.

    Columns: a key (StudyInstanceUID, or AccessionNumber) and either ``findings`` and/or
    ``impression`` (also ``conclusion``) or one text column (``report``, ``report_text``, ``text``).
    Cells may span lines (quoted CSV); comma, semicolon or tab separated; an Excel BOM is fine.

    Raises:
        ConfigError: missing/unreadable file, no header, no key column, or no text column. Row
            problems (blank key, invalid UID, duplicate key, empty report) are recorded instead.
    """
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise ConfigError(file, [("<file>", "report file not found")])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(file, [("<file>", f"cannot read as UTF-8 text: {type(err).__name__}")]) from None
    first_line = text.split("\n", 1)[0]
    if not first_line.strip():
        raise ConfigError(file, [("<file>", "empty file: expected a header row")])
    try:
        dialect: Any = csv.Sniffer().sniff(first_line, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    header = [h.strip() for h in next(reader)]
    key_idx, level = _key_column(file, header, key_column)
    columns = {kind: next((i for i, h in enumerate(header) if _norm(h) in aliases), None)
               for kind, aliases in (("findings", _FINDINGS), ("impression", _IMPRESSION), ("other", _TEXT))}
    if all(i is None for i in columns.values()):
        raise ConfigError(file, [("<header>", "no report text column: expected findings and/or impression, or one of "
                                              f"report, report_text, text; columns are: {', '.join(header)}")])
    manifest = ReportManifest(file, header[key_idx], level, [header[i] for i in columns.values() if i is not None])
    for row in reader:
        lineno = reader.line_num  # the line the row ends on (cells may span lines)
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path.name} row ending on line {lineno}"
        key = row[key_idx].strip() if key_idx < len(row) else ""
        if not key:
            manifest.problems.append(ReportProblem(where, "blank_key", "", "row has no key"))
            continue
        if level == "study" and (not _UID_RE.match(key) or len(key) > 64):
            manifest.problems.append(ReportProblem(where, "invalid_uid", key, "not a valid DICOM UID"))
        cells = {kind: (row[i].strip() if i is not None and i < len(row) else "") for kind, i in columns.items()}
        report = Report(cells["findings"], cells["impression"], cells["other"], f"{path.name} line {lineno}")
        if report.empty:
            manifest.problems.append(ReportProblem(where, "empty_report", key, "report text is blank"))
            if key not in manifest.reports:
                manifest.empty_keys.add(key)
            continue
        if key in manifest.reports:
            manifest.duplicate_keys.add(key)
            manifest.problems.append(ReportProblem(where, "duplicate_key", key, "second report for this key, "
                                                                                 "first row kept"))
            continue
        manifest.reports[key] = report
        manifest.empty_keys.discard(key)
    return manifest


def _key_column(file: str, header: list[str], key_column: str | None) -> tuple[int, ReportKeyLevel]:
    def level_of(name: str) -> ReportKeyLevel | None:
        return next((lvl for lvl, aliases in _KEY_ALIASES if _norm(name) in aliases), None)

    if key_column is not None:
        idx = next((i for i, h in enumerate(header) if h.lower() == key_column.lower()), None)
        if idx is None:
            raise ConfigError(file, [(key_column, "key column not found in header")])
        level = level_of(header[idx])
        if level is None:
            raise ConfigError(file, [(key_column, "key column must be StudyInstanceUID or AccessionNumber")])
        return idx, level
    for level, _ in _KEY_ALIASES:
        for i, h in enumerate(header):
            if level_of(h) == level:
                return i, level
    raise ConfigError(file, [("<header>", "no key column: expected StudyInstanceUID or AccessionNumber; "
                                          f"columns are: {', '.join(header)}")])


# --------------------------------------------------------------------------- DICOM SR

def read_sr_report(path: Path, source: str | None = None) -> Report:
    """The narrative of a Basic Text / Enhanced / Comprehensive SR object.

    Walks the content tree from the root through ``CONTAINS`` relationships and keeps the TEXT
    items: a text whose own concept name or enclosing container's says *impression* / *conclusion*
    goes to ``impression``, *finding* to ``findings``, the rest to ``other`` (document order, one
    line per item). Observation context (observer, organisation), concept modifiers and references
    are not read.

    Raises:
        ValueError: the file is not a readable SR object (the caller records it as a problem).
    """
    from pydicom import dcmread

    from ai4hi_sdk.data import dicomio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(dicomio.open_source(path))
    except Exception as err:  # noqa: BLE001 - any parse failure is "unreadable"
        raise ValueError(f"not a readable DICOM file ({type(err).__name__})") from None
    if str(ds.get("ValueType", "")).upper() != "CONTAINER" or "ContentSequence" not in ds:
        raise ValueError("SR object without a root CONTAINER holding content")
    sections: dict[str, list[str]] = {"findings": [], "impression": [], "other": []}
    _walk(ds.ContentSequence, [_concept(ds)], sections, depth=0)
    return Report("\n".join(sections["findings"]), "\n".join(sections["impression"]), "\n".join(sections["other"]),
                  source or f"SR {Path(path).name}")


def _concept(item: Any) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].get("CodeMeaning", "")).strip().lower() if seq else ""


def _walk(items: Any, headings: list[str], sections: dict[str, list[str]], depth: int) -> None:
    if depth > 32:  # malformed or hostile nesting
        return
    for item in items or []:
        if str(item.get("RelationshipType", "")).upper() != "CONTAINS":
            continue
        kind = str(item.get("ValueType", "")).upper()
        name = _concept(item)
        if kind == "TEXT":
            value = str(item.get("TextValue", "")).replace("\r\n", "\n").replace("\r", "\n").strip()
            if value:
                sections[_section([name, *reversed(headings)])].append(value)
        if "ContentSequence" in item and kind == "CONTAINER":
            _walk(item.ContentSequence, [*headings, name], sections, depth + 1)


def _section(names: list[str]) -> str:
    """Innermost name first: the first that names a section decides."""
    for name in names:
        if any(k in name for k in _IMPRESSION_NAMES):
            return "impression"
        if any(k in name for k in _FINDINGS_NAMES):
            return "findings"
    return "other"


# --------------------------------------------------------------------------- join

def _accession_numbers(scan: ScanReport) -> dict[str, str]:
    """AccessionNumber -> StudyInstanceUID, from the header of each study's first image (read
    here only to join a report export keyed by accession number; never stored)."""
    from pydicom import dcmread

    from ai4hi_sdk.data import dicomio

    first: dict[str, str] = {}
    for record in scan.instances:
        first.setdefault(record.study_instance_uid, record.path)
    out: dict[str, str] = {}
    root = Path(scan.root)
    for study, rel in first.items():
        path = root / rel
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(dicomio.open_source(path), stop_before_pixels=True, specific_tags=["AccessionNumber"])
        except Exception:  # noqa: BLE001 - the scan read it; a vanished file just has no accession
            continue
        accession = str(ds.get("AccessionNumber", "") or "").strip()
        if accession:
            out.setdefault(accession, study)
    return out


def _is_final(record: ReportObjectRecord) -> bool:
    return record.completion_flag == "COMPLETE" and record.verification_flag == "VERIFIED"


def _sr_order(records: list[ReportObjectRecord]) -> list[ReportObjectRecord]:
    """Final reports first, then latest content date/time first, then path order (stable sorts)."""
    out = sorted(records, key=lambda r: r.path)
    out.sort(key=lambda r: r.content_datetime, reverse=True)
    out.sort(key=lambda r: not _is_final(r))
    return out


def join_reports(scan: ScanReport, manifest: ReportManifest | None = None) -> ReportJoin:
    """Give every scanned study its report (never raises on mismatches).

    Sources are the manifest's rows and the scan's SR objects. A study with several non-empty
    reports uses, in this order: a final (COMPLETE and VERIFIED) SR object, latest content time
    first; then the export's row (a RIS export holds signed reports); then other SR objects. It is
    counted in ``duplicate_studies``. An SR object that cannot be read is a problem, not an error.
    """
    studies = sorted({r.study_instance_uid for r in scan.instances})
    study_set = set(studies)
    problems: list[ReportProblem] = list(manifest.problems) if manifest is not None else []
    candidates: dict[str, list[tuple[tuple[int, ...], Report, str]]] = {}
    empty: set[str] = set()
    extra: set[str] = set()

    to_study = _accession_numbers(scan) if manifest is not None and manifest.key_level == "accession" else None

    def resolve(key: str) -> str | None:
        return key if to_study is None else to_study.get(key)

    if manifest is not None:
        for key, report in manifest.reports.items():
            study = resolve(key)
            if study is None or study not in study_set:
                extra.add(key)
                continue
            candidates.setdefault(study, []).append(((1,), report, "csv"))
        for key in manifest.empty_keys:
            study = resolve(key)
            if study is None or study not in study_set:
                extra.add(key)
            else:
                empty.add(study)

    root = Path(scan.root)
    for rank, record in enumerate(_sr_order(scan.report_objects)):
        where = f"SR {record.path}"
        try:
            report = read_sr_report(root / record.path, source=where)
        except ValueError as err:
            problems.append(ReportProblem(where, "unreadable_sr", record.study_instance_uid, str(err)))
            continue
        if record.study_instance_uid not in study_set:
            extra.add(record.study_instance_uid)
            continue
        if report.empty:
            problems.append(ReportProblem(where, "empty_report", record.study_instance_uid, "no report text"))
            empty.add(record.study_instance_uid)
            continue
        candidates.setdefault(record.study_instance_uid, []).append(((0 if _is_final(record) else 2, rank), report, "sr"))

    chosen: dict[str, Report] = {}
    sources: Counter[str] = Counter()
    duplicates: list[str] = []
    for study in studies:
        options = sorted(candidates.get(study, []), key=lambda c: c[0])
        if options:
            chosen[study] = options[0][1]
            sources[options[0][2]] += 1
            if len(options) > 1:
                duplicates.append(study)
    if manifest is not None:
        for key in manifest.duplicate_keys:  # duplicate rows of one key count as one duplicated study
            study = resolve(key)
            if study in chosen and study not in duplicates:
                duplicates.append(study)
    return ReportJoin(
        reports=chosen, n_studies=len(studies),
        missing_studies=[s for s in studies if s not in chosen and s not in empty],
        empty_studies=sorted(s for s in empty if s not in chosen),
        duplicate_studies=sorted(duplicates), extra_keys=sorted(extra), sources=dict(sources), problems=problems)


def load_site_reports(site_dir: Path, scan: ScanReport | None = None) -> ReportJoin:
    """Reports of a site folder: ``site_dir/reports.csv`` (if present) and the SR objects under its
    DICOM folder (``site_dir/dicom`` or ``site_dir``). Scans the folder unless ``scan`` is given.

    This is the entry point for anything that uses report text at a site (weak labels, image-report
    pretraining): ``load_site_reports(site_dir, scan).text(study_uid)``.
    """
    from ai4hi_sdk.data.scan import scan_directory

    site_dir = Path(site_dir)
    if scan is None:
        dicom = site_dir / "dicom"
        scan = scan_directory(dicom if dicom.is_dir() else site_dir)
    csv_path = site_dir / REPORTS_FILE
    return join_reports(scan, load_report_csv(csv_path) if csv_path.is_file() else None)

"""Label manifests: a CSV keyed by a DICOM UID, joined onto a :class:`ScanReport`.

Hospitals export labels from a PACS/RIS as a spreadsheet with one row per study, series or
image. :func:`load_label_manifest` finds the key column (SOPInstanceUID, SeriesInstanceUID or
StudyInstanceUID, in any case or spacing), reads the labels and records row-level problems
(duplicate keys, blank labels) without failing. :func:`join_labels` says which images got a
label and which did not; nothing about the join is fatal, it is reported.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ai4hi_sdk.data.scan import ScanReport
from ai4hi_sdk.errors import ConfigError

KeyLevel = Literal["sop", "series", "study"]

# Normalised header name -> level. Most specific first: it wins when several are present.
_KEY_ALIASES: tuple[tuple[KeyLevel, tuple[str, ...]], ...] = (
    ("sop", ("sopinstanceuid", "sopuid", "instanceuid")),
    ("series", ("seriesinstanceuid", "seriesuid")),
    ("study", ("studyinstanceuid", "studyuid")),
)
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class LabelProblem:
    """One non-fatal problem in a manifest. ``row`` is the 1-based CSV line number."""

    row: int
    kind: str  # blank_key | blank_label | duplicate_key | invalid_uid
    key: str
    detail: str


@dataclass
class LabelManifest:
    """Labels read from a CSV: ``labels`` maps key UID -> label text (first row wins)."""

    path: str
    key_column: str
    key_level: KeyLevel
    label_column: str
    labels: dict[str, str] = field(default_factory=dict)
    problems: list[LabelProblem] = field(default_factory=list)

    @property
    def duplicates(self) -> list[str]:
        return sorted({p.key for p in self.problems if p.kind == "duplicate_key"})


@dataclass
class LabelJoin:
    """Labels matched to scanned instances.

    ``labels`` maps SOP Instance UID -> label for every labelled instance (a study- or
    series-level label applies to all its instances). ``coverage`` is the fraction of
    scanned instances with a label (0.0 when the scan found none).
    """

    key_level: KeyLevel
    labels: dict[str, str]
    missing_instances: list[str]
    missing_studies: list[str]
    extra_keys: list[str]
    duplicates: list[str]
    problems: list[LabelProblem]
    n_instances: int

    @property
    def coverage(self) -> float:
        return len(self.labels) / self.n_instances if self.n_instances else 0.0

    def summary(self) -> dict[str, Any]:
        """Counts only."""
        return {
            "key_level": self.key_level,
            "labelled_instances": len(self.labels),
            "instances": self.n_instances,
            "coverage": round(self.coverage, 4),
            "missing_instances": len(self.missing_instances),
            "missing_studies": len(self.missing_studies),
            "extra_keys": len(self.extra_keys),
            "duplicates": len(self.duplicates),
            "problems": len(self.problems),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "missing_instances": self.missing_instances,
            "missing_studies": self.missing_studies,
            "extra_keys": self.extra_keys,
            "duplicates": self.duplicates,
            "problems": [asdict(p) for p in self.problems],
        }


def _norm_header(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _key_level(header: str) -> KeyLevel | None:
    norm = _norm_header(header)
    for level, aliases in _KEY_ALIASES:
        if norm in aliases:
            return level
    return None


def load_label_manifest(
    path: Path, *, key_column: str | None = None, label_column: str = "label"
) -> LabelManifest:
    """Read a label CSV.

    Args:
        path: CSV file (comma, semicolon or tab separated; an Excel BOM is fine).
        key_column: header of the UID column; default: auto-detect, preferring
            SOPInstanceUID over SeriesInstanceUID over StudyInstanceUID.
        label_column: header of the label column (case-insensitive).

    Raises:
        ConfigError: missing/unreadable file, no header, no recognised key column, or
            no label column. Row-level problems are recorded in ``problems`` instead.
    """
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise ConfigError(file, [("<file>", "label file not found")])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(file, [("<file>", f"cannot read as UTF-8 text: {err}")]) from err
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(file, [("<file>", "empty file: expected a header row")])
    try:
        dialect: Any = csv.Sniffer().sniff(lines[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(lines, dialect)
    header = [h.strip() for h in next(reader)]

    key_idx, level = _find_key_column(file, header, key_column)
    label_idx = next(
        (i for i, h in enumerate(header) if h.lower() == label_column.lower()), None
    )
    if label_idx is None:
        raise ConfigError(
            file,
            [(label_column, f"label column not found; columns are: {', '.join(header)}")],
        )

    manifest = LabelManifest(file, header[key_idx], level, header[label_idx])
    for lineno, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue  # trailing blank lines
        key = row[key_idx].strip() if key_idx < len(row) else ""
        label = row[label_idx].strip() if label_idx < len(row) else ""
        if not key:
            manifest.problems.append(LabelProblem(lineno, "blank_key", "", "row has no key UID"))
            continue
        if not _UID_RE.match(key) or len(key) > 64:
            # Spreadsheets turn UIDs into numbers ('1.23E+45'); keep the row, flag it.
            manifest.problems.append(
                LabelProblem(lineno, "invalid_uid", key, "not a valid DICOM UID")
            )
        if not label:
            manifest.problems.append(LabelProblem(lineno, "blank_label", key, "label is blank"))
            continue
        if key in manifest.labels:
            first = manifest.labels[key]
            detail = "duplicate key, first row kept" + (
                f" (conflicting label {label!r} vs {first!r})" if label != first else ""
            )
            manifest.problems.append(LabelProblem(lineno, "duplicate_key", key, detail))
            continue
        manifest.labels[key] = label
    return manifest


def _find_key_column(
    file: str, header: list[str], key_column: str | None
) -> tuple[int, KeyLevel]:
    if key_column is not None:
        idx = next((i for i, h in enumerate(header) if h.lower() == key_column.lower()), None)
        if idx is None:
            raise ConfigError(file, [(key_column, "key column not found in header")])
        level = _key_level(header[idx])
        if level is None:
            raise ConfigError(
                file,
                [(key_column, "key column must be SOPInstanceUID, SeriesInstanceUID "
                              "or StudyInstanceUID")],
            )
        return idx, level
    for level, _aliases in _KEY_ALIASES:
        for i, h in enumerate(header):
            if _key_level(h) == level:
                return i, level
    raise ConfigError(
        file,
        [("<header>", "no key column: expected one of SOPInstanceUID, SeriesInstanceUID, "
                      f"StudyInstanceUID; columns are: {', '.join(header)}")],
    )


def join_labels(report: ScanReport, manifest: LabelManifest) -> LabelJoin:
    """Attach manifest labels to the scanned instances (never raises on mismatches)."""
    attr = {
        "sop": "sop_instance_uid",
        "series": "series_instance_uid",
        "study": "study_instance_uid",
    }[manifest.key_level]
    labels: dict[str, str] = {}
    matched_keys: set[str] = set()
    labelled_studies: set[str] = set()
    missing: list[str] = []
    for r in report.instances:
        key = getattr(r, attr)
        if key in manifest.labels:
            labels[r.sop_instance_uid] = manifest.labels[key]
            matched_keys.add(key)
            labelled_studies.add(r.study_instance_uid)
        else:
            missing.append(r.sop_instance_uid)
    all_studies = {r.study_instance_uid for r in report.instances}
    return LabelJoin(
        key_level=manifest.key_level,
        labels=labels,
        missing_instances=sorted(missing),
        missing_studies=sorted(all_studies - labelled_studies),
        extra_keys=sorted(set(manifest.labels) - matched_keys),
        duplicates=manifest.duplicates,
        problems=list(manifest.problems),
        n_instances=len(report.instances),
    )

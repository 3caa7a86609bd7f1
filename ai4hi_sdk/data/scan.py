"""Index a folder of DICOM files: what is readable, what is not and why.

:func:`scan_directory` walks a folder (sorted, so the result is deterministic), reads each
file's header with pydicom (plain or gzip-compressed, ``.dcm.gz``), trial-decodes the first
frame only (no colour conversion: memory stays at one frame however long a cine is), and sorts
every file into an :class:`InstanceRecord` (a usable image), a :class:`SegmentationRecord` (a DICOM
SEG object: a label, never a training image), a :class:`ReportObjectRecord` (a Basic, Enhanced or
Comprehensive SR object: a report, read by :mod:`~ai4hi_sdk.data.reports`; the scan keeps only its
header, never its text) or a :class:`SkippedFile` with a reason code. It never
raises on a bad file: a hospital export always holds a few. Copies of one SOP Instance keep the best
file: uncompressed before lossless-compressed before anything lossy.

What a job then trains on is chosen from the records by :mod:`~ai4hi_sdk.data.selection` and, for
volumes, :mod:`~ai4hi_sdk.data.volumes`; what they leave out is added to the same report
(``excluded``, ``refused_series``) and counted by reason.

Privacy: the report holds no raw patient identifier. PatientID is kept only as a salted
SHA-256 pseudonym (``patient_key``) so that studies of one patient can be grouped locally;
names, birth dates and accession numbers are never read into it. The report itself stays
on the site (DESIGN.md, guarantee 1).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.multival
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian, SegmentationStorage

from ai4hi_sdk.data import dicomio
from ai4hi_sdk.data.dicom_values import float_pair, float_triple, float_tuple

from ai4hi_sdk.data.subgroups import (
    age_band,
    normalise_manufacturer,
    normalise_sex,
    parse_age_years,
)
from ai4hi_sdk.errors import UserError

# Reason codes of skipped files, in the order the checks run.
SKIP_REASONS: dict[str, str] = {
    "not_dicom": "not a DICOM file",
    "no_file_meta": "DICOM dataset without Part 10 header (no preamble / 'DICM')",
    "read_error": "pydicom could not parse the file",
    "no_pixel_data": "no image pixel data (e.g. DICOMDIR, dose SR, RT plan, waveform)",
    "missing_uid": "Study, Series or SOP Instance UID missing",
    "missing_transfer_syntax": "file meta has no Transfer Syntax UID",
    "unsupported_transfer_syntax": "no pixel decoder available for the transfer syntax",
    "invalid_pixel_header": "Rows / Columns / Bits Allocated / Number of Frames invalid",
    "truncated": "pixel data shorter than the image description requires",
    "duplicate_instance": "SOP Instance UID also in a better copy (uncompressed > lossless > lossy)",
    "pixel_decode_error": "pixel data could not be decoded (verify_pixels)",
}

# Values larger than this stay on disk until asked for (pixel data, overlays, icons).
_DEFER_SIZE = 4096
# A non-Part-10 file is only parsed "by force" (to tell a raw dataset from junk) if small.
_MAX_FORCE_READ_BYTES = 64 * 1024 * 1024
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_UNDEFINED_LENGTH = 0xFFFFFFFF
_MIN_ELEMENT_HEADER = 8  # tag (4) + VR/length (4): fewer trailing bytes cannot be an element
_PATIENT_SALT = "ai4hi-patient-v1"
_MAX_DETAIL = 300
#: SOP classes that hold masks, not images (Segmentation, Label Map Segmentation)
SEGMENTATION_SOP_CLASSES = frozenset({SegmentationStorage, "1.2.840.10008.5.1.4.1.1.66.7"})
#: SR classes that hold a narrative report (Basic Text, Enhanced, Comprehensive, Comprehensive 3D SR);
#: other SR classes (dose reports, key object selections, CAD) carry no report text and stay skipped
REPORT_SR_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",
                                   "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"})
# pydicom decoder plugin -> what to pip-install for it (its own hint names import modules)
_PLUGIN_PACKAGES = {"gdcm": "python-gdcm", "pylibjpeg": "pylibjpeg", "pyjpegls": "pyjpegls",
                    "pillow": "pillow", "numpy": "numpy"}


@dataclass(frozen=True)
class InstanceRecord:
    """One readable image instance (a DICOM file with pixel data).

    ``path`` is POSIX, relative to the scanned root. ``pixel_spacing`` is (row, column)
    spacing in mm from PixelSpacing, else ImagerPixelSpacing (projection radiography); for
    Enhanced multi-frame objects from the shared functional groups. ``image_position``
    (ImagePositionPatient, x, y, z in mm) and ``image_orientation`` (ImageOrientationPatient: row
    then column direction cosines) place a slice in the patient (LPS) frame; an Enhanced object
    (``enhanced``) carries them per frame, read when its volume is built. ``image_type`` is
    ImageType (e.g. ORIGINAL, PRIMARY, AXIAL); ``lossy``: lossy transfer syntax or
    LossyImageCompression 01; ``constant``: the first frame holds a single value.
    ``age_years`` comes from PatientAge; ``patient_key`` is a salted hash of PatientID.
    """

    path: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    modality: str
    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int
    bits_allocated: int
    photometric_interpretation: str
    transfer_syntax_uid: str
    pixel_spacing: tuple[float, float] | None
    instance_number: int | None
    image_position: tuple[float, float, float] | None
    sex: str
    age_years: float | None
    age_band: str
    manufacturer: str
    manufacturer_raw: str
    model: str
    patient_key: str | None
    file_size: int
    image_orientation: tuple[float, ...] | None = None
    image_type: tuple[str, ...] = ()
    frame_of_reference_uid: str = ""
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    enhanced: bool = False
    lossy: bool = False
    constant: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("pixel_spacing", "image_position", "image_orientation", "image_type"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


@dataclass(frozen=True)
class SegmentationRecord:
    """A DICOM SEG object: a mask over the images of ``referenced_series_uids``, not an image.

    ``segmentation_type`` is BINARY, FRACTIONAL or LABELMAP; ``segments`` counts the segments
    described in SegmentSequence; ``frame_of_reference_uid`` places its frames in patient space.
    """

    path: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    referenced_series_uids: tuple[str, ...]
    segmentation_type: str
    segments: int
    number_of_frames: int
    rows: int
    columns: int
    transfer_syntax_uid: str
    file_size: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["referenced_series_uids"] = list(self.referenced_series_uids)
        return d


@dataclass(frozen=True)
class ReportObjectRecord:
    """A DICOM SR object holding a report of its study (header only: the scan never reads its text).

    ``completion_flag`` (PARTIAL / COMPLETE) and ``verification_flag`` (UNVERIFIED / VERIFIED) say
    how final the report is; ``content_datetime`` is ContentDate + ContentTime (``YYYYMMDDhhmmss``,
    empty when absent), used to prefer the latest of several reports of one study.
    """

    path: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    completion_flag: str
    verification_flag: str
    content_datetime: str
    transfer_syntax_uid: str
    file_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExcludedInstance:
    """A readable image a job does not train on (see :mod:`~ai4hi_sdk.data.selection`)."""

    path: str
    sop_instance_uid: str
    reason_code: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SeriesRefusal:
    """A series (or multi-frame object) that cannot be assembled into a volume, and why.

    ``reason_code`` is a key of :data:`ai4hi_sdk.data.geometry.REFUSAL_REASONS`; ``detail`` names
    the series and the measured numbers.
    """

    series_instance_uid: str
    reason_code: str
    detail: str
    files: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SkippedFile:
    """A file that is not a usable image. ``reason_code`` is a key of :data:`SKIP_REASONS`."""

    path: str
    reason_code: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScanReport:
    """Result of :func:`scan_directory`. Summaries are computed from the two lists.

    ``studies`` maps study UID -> {series UID -> instance count}. ``subgroup_counts``
    counts *studies* (not images) per sex / age band / manufacturer, so a 300-slice CT
    weighs as much as one radiograph. ``excluded`` (images a job does not use) and
    ``refused_series`` (series that are no volume) are filled by the loaders, not the scan.
    ``report_objects`` are the SR objects holding reports (see :mod:`~ai4hi_sdk.data.reports`).
    """

    root: str
    verify_pixels: bool
    instances: list[InstanceRecord] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    segmentations: list[SegmentationRecord] = field(default_factory=list)
    excluded: list[ExcludedInstance] = field(default_factory=list)
    refused_series: list[SeriesRefusal] = field(default_factory=list)
    report_objects: list[ReportObjectRecord] = field(default_factory=list)

    @property
    def files_read(self) -> int:
        """Image files read (SEG objects are counted apart, in ``segmentations``)."""
        return len(self.instances)

    @property
    def files_skipped(self) -> int:
        return len(self.skipped)

    @property
    def files_seen(self) -> int:
        return self.files_read + len(self.segmentations) + len(self.report_objects) + self.files_skipped

    @property
    def excluded_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(e.reason_code for e in self.excluded).items()))

    @property
    def series_refused_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason_code for r in self.refused_series).items()))

    @property
    def modalities(self) -> dict[str, int]:
        return dict(sorted(Counter(r.modality for r in self.instances).items()))

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason_code for s in self.skipped).items()))

    @property
    def studies(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.instances:
            series = out.setdefault(r.study_instance_uid, {})
            series[r.series_instance_uid] = series.get(r.series_instance_uid, 0) + 1
        return {s: dict(sorted(v.items())) for s, v in sorted(out.items())}

    @property
    def series_count(self) -> int:
        return sum(len(v) for v in self.studies.values())

    @property
    def subgroup_counts(self) -> dict[str, dict[str, int]]:
        first: dict[str, InstanceRecord] = {}
        for r in self.instances:  # instances are path-sorted: first file represents the study
            first.setdefault(r.study_instance_uid, r)
        out: dict[str, dict[str, int]] = {}
        for attr in ("sex", "age_band", "manufacturer"):
            counts = Counter(getattr(r, attr) for r in first.values())
            out[attr] = dict(sorted(counts.items()))
        return out

    def summary(self) -> dict[str, Any]:
        """Counts only (no UIDs, no paths)."""
        return {
            "files_seen": self.files_seen,
            "files_read": self.files_read,
            "files_skipped": self.files_skipped,
            "skipped_by_reason": self.skipped_by_reason,
            "segmentation_objects": len(self.segmentations),
            "report_objects": len(self.report_objects),
            "excluded_by_reason": self.excluded_by_reason,
            "series_refused_by_reason": self.series_refused_by_reason,
            "modalities": self.modalities,
            "studies": len(self.studies),
            "series": self.series_count,
            "subgroup_counts": self.subgroup_counts,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view: summary, study/series grouping, every instance and skipped file."""
        return {
            "root": self.root,
            "verify_pixels": self.verify_pixels,
            "summary": self.summary(),
            "studies": self.studies,
            "instances": [r.to_dict() for r in self.instances],
            "skipped": [s.to_dict() for s in self.skipped],
            "segmentations": [r.to_dict() for r in self.segmentations],
            "report_objects": [r.to_dict() for r in self.report_objects],
            "excluded": [e.to_dict() for e in self.excluded],
            "refused_series": [r.to_dict() for r in self.refused_series],
        }


class _Skip(Exception):
    """Internal: abort reading one file with a reason code."""

    def __init__(self, reason_code: str, detail: str):
        super().__init__(reason_code)
        self.reason_code = reason_code
        self.detail = detail[:_MAX_DETAIL]


def iter_files(root: Path) -> list[Path]:
    """All regular files (and file symlinks) under ``root``, sorted by relative POSIX path.

    Directory symlinks are not followed, so a link loop cannot make the walk endless.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def scan_directory(root: Path, *, verify_pixels: bool = False) -> ScanReport:
    """Index every file under ``root``.

    Args:
        root: folder to walk recursively.
        verify_pixels: decode every frame of every image (slower; one frame in memory at a
            time) and skip files that fail with ``pixel_decode_error``. Without it the first
            frame is trial-decoded and pixel-data lengths are checked.

    Returns:
        A :class:`ScanReport`; every file seen is in exactly one of ``instances``,
        ``segmentations``, ``report_objects`` or ``skipped``. Of several files with one SOP Instance UID the best
        copy is kept (uncompressed, then lossless, then path order); the others are skipped as
        ``duplicate_instance`` naming the kept file.

    Raises:
        UserError: ``root`` does not exist or is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"DICOM folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a folder: {root} (give the folder that holds the DICOM files)")
    report = ScanReport(root=str(root), verify_pixels=verify_pixels)
    readable: list[_Record] = []
    for path in iter_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            with warnings.catch_warnings():
                # pydicom warns on every sloppy value; the skip reasons carry what matters.
                warnings.simplefilter("ignore")
                readable.append(_read_file(path, rel, verify_pixels=verify_pixels))
        except _Skip as skip:
            report.skipped.append(SkippedFile(rel, skip.reason_code, skip.detail))
        except Exception as err:  # noqa: BLE001 - a bad file must never stop the scan
            report.skipped.append(SkippedFile(rel, "read_error", _describe(err)))
    kept, duplicates = _deduplicate(readable)
    report.instances = [r for r in kept if isinstance(r, InstanceRecord)]
    report.segmentations = [r for r in kept if isinstance(r, SegmentationRecord)]
    report.report_objects = [r for r in kept if isinstance(r, ReportObjectRecord)]
    report.skipped = sorted(report.skipped + duplicates, key=lambda s: s.path)
    return report


_Record = InstanceRecord | SegmentationRecord | ReportObjectRecord


def _copy_rank(record: _Record) -> tuple[int, int, str]:
    lossy = getattr(record, "lossy", False)
    return (*dicomio.compression_rank(record.transfer_syntax_uid, lossy), record.path)


def _deduplicate(records: list[_Record]) -> tuple[list[_Record], list[SkippedFile]]:
    """Keep the best copy of each SOP Instance UID (path order kept); skip the others."""
    best: dict[str, _Record] = {}
    for record in records:
        current = best.get(record.sop_instance_uid)
        if current is None or _copy_rank(record) < _copy_rank(current):
            best[record.sop_instance_uid] = record
    kept, skipped = [], []
    for record in records:
        winner = best[record.sop_instance_uid]
        if winner is record:
            kept.append(record)
            continue
        w_lossy, w_compressed, _ = _copy_rank(winner)
        r_lossy, r_compressed, _ = _copy_rank(record)
        why = ("lossless kept over lossy" if r_lossy > w_lossy
               else "uncompressed kept over compressed" if r_compressed > w_compressed
               else "first in path order kept")
        skipped.append(SkippedFile(record.path, "duplicate_instance",
                                   f"same SOP Instance UID as {winner.path} ({why})"))
    return kept, skipped


def _read_file(path: Path, rel: str, *, verify_pixels: bool = False) -> _Record:
    """Read one file into a record; raise ``_Skip`` if it is not a usable image, SEG or SR report."""
    source, size = _open(path)
    ds = _read_dataset(source, size)
    if _text(ds.get("SOPClassUID")) in REPORT_SR_SOP_CLASSES:
        return _report_object_record(ds, rel, size)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        sop_class = getattr(ds.get("SOPClassUID"), "name", "") or str(ds.get("Modality", ""))
        raise _Skip("no_pixel_data", f"no Pixel Data element ({sop_class or 'unknown type'})")

    uids = {k: _text(ds.get(k)) for k in _UID_KEYWORDS}
    missing = [k for k, v in uids.items() if not v]
    if missing:
        raise _Skip("missing_uid", "missing " + ", ".join(missing))

    ts = _text(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None))
    if not ts:
        raise _Skip("missing_transfer_syntax", "file meta has no (0002,0010) Transfer Syntax UID")
    _check_decoder(ts)

    rows, columns, frames, samples, bits = _pixel_geometry(ds)
    # YBR_FULL_422 stores chroma at half horizontal resolution: 2 samples per pixel on disk.
    stored_samples = 2 if _text(ds.get("PhotometricInterpretation")) == "YBR_FULL_422" else samples
    _check_length(ds, size, ts, rows * columns * frames * stored_samples, bits)
    # one frame is always decoded (an installed decoder says nothing about whether this file's
    # stream is intact, and a constant image is no training image); all of them on request
    first = _trial_decode(source, frames=frames if verify_pixels else 1)

    if _text(ds.get("SOPClassUID")) in SEGMENTATION_SOP_CLASSES:
        return _segmentation_record(ds, rel, uids, ts, rows, columns, frames, size)
    years = parse_age_years(ds.get("PatientAge"))
    manufacturer_raw = _text(ds.get("Manufacturer"))
    patient_id = _text(ds.get("PatientID"))
    return InstanceRecord(
        path=rel,
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_class_uid=_text(ds.get("SOPClassUID")),
        modality=_text(ds.get("Modality")) or "unknown",
        rows=rows,
        columns=columns,
        number_of_frames=frames,
        samples_per_pixel=samples,
        bits_allocated=bits,
        photometric_interpretation=_text(ds.get("PhotometricInterpretation")),
        transfer_syntax_uid=ts,
        pixel_spacing=float_pair(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
                                 or _functional_group(ds, "PixelMeasuresSequence", "PixelSpacing")),
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        image_position=float_triple(ds.get("ImagePositionPatient")),
        sex=normalise_sex(ds.get("PatientSex")),
        age_years=years,
        age_band=age_band(years),
        manufacturer=normalise_manufacturer(manufacturer_raw),
        manufacturer_raw=manufacturer_raw,
        model=_text(ds.get("ManufacturerModelName")),
        patient_key=pseudonymise_patient_id(patient_id) if patient_id else None,
        file_size=size,
        image_orientation=float_tuple(ds.get("ImageOrientationPatient") or _functional_group(
            ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        image_type=tuple(_text(v).upper() for v in _as_list(ds.get("ImageType"))),
        frame_of_reference_uid=_text(ds.get("FrameOfReferenceUID")),
        slice_thickness=_float_or_none(ds.get("SliceThickness") or _functional_group(
            ds, "PixelMeasuresSequence", "SliceThickness")),
        spacing_between_slices=_float_or_none(ds.get("SpacingBetweenSlices") or _functional_group(
            ds, "PixelMeasuresSequence", "SpacingBetweenSlices")),
        enhanced="PerFrameFunctionalGroupsSequence" in ds,
        lossy=dicomio.is_lossy(ts, ds.get("LossyImageCompression")),
        constant=bool(first.min() == first.max()),
    )


def _segmentation_record(ds: Dataset, rel: str, uids: dict[str, str], ts: str, rows: int, columns: int,
                         frames: int, size: int) -> SegmentationRecord:
    referenced = tuple(sorted({_text(item.get("SeriesInstanceUID"))
                               for item in ds.get("ReferencedSeriesSequence") or []} - {""}))
    return SegmentationRecord(
        path=rel, sop_instance_uid=uids["SOPInstanceUID"], study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"], frame_of_reference_uid=_text(ds.get("FrameOfReferenceUID")),
        referenced_series_uids=referenced, segmentation_type=_text(ds.get("SegmentationType")) or "unknown",
        segments=len(ds.get("SegmentSequence") or []), number_of_frames=frames, rows=rows, columns=columns,
        transfer_syntax_uid=ts, file_size=size)


def _report_object_record(ds: Dataset, rel: str, size: int) -> ReportObjectRecord:
    uids = {k: _text(ds.get(k)) for k in _UID_KEYWORDS}
    missing = [k for k, v in uids.items() if not v]
    if missing:
        raise _Skip("missing_uid", "SR object missing " + ", ".join(missing))
    return ReportObjectRecord(
        path=rel, sop_instance_uid=uids["SOPInstanceUID"], study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"], sop_class_uid=_text(ds.get("SOPClassUID")),
        completion_flag=_text(ds.get("CompletionFlag")).upper(),
        verification_flag=_text(ds.get("VerificationFlag")).upper(),
        content_datetime=(_text(ds.get("ContentDate")) + _text(ds.get("ContentTime")).split(".")[0]),
        transfer_syntax_uid=_text(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)),
        file_size=size)


def _functional_group(ds: Dataset, group: str, keyword: str) -> Any:
    """``keyword`` from the shared functional groups of an Enhanced object, else frame 1's."""
    for outer in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(outer) or []
        if items and group in items[0] and items[0][group].value:
            value = items[0][group].value[0].get(keyword)
            if value is not None:
                return value
    return None


def pseudonymise_patient_id(patient_id: str) -> str:
    """Stable 16-hex-digit pseudonym of a PatientID (salted SHA-256); never the raw value."""
    return hashlib.sha256(f"{_PATIENT_SALT}:{patient_id}".encode()).hexdigest()[:16]


def _open(path: Path) -> tuple[Path | io.BytesIO, int]:
    """The file, or its inflated content if it is gzip-compressed, and the content's size."""
    try:
        if not dicomio.is_gzip(path):
            return path, path.stat().st_size
    except OSError as err:
        raise _Skip("read_error", _describe(err)) from err
    try:
        data = dicomio.inflate(path)
    except EOFError as err:
        raise _Skip("truncated", f"gzip stream ends early: {_describe(err)}") from err
    except Exception as err:  # noqa: BLE001 - zlib, gzip and size errors all mean unreadable
        raise _Skip("read_error", f"gzip file cannot be inflated: {_describe(err)}") from err
    return io.BytesIO(data), len(data)


def _head(source: Path | io.BytesIO) -> bytes:
    if isinstance(source, io.BytesIO):
        return source.getvalue()[:132]
    try:
        with open(source, "rb") as fh:
            return fh.read(132)
    except OSError as err:
        raise _Skip("read_error", _describe(err)) from err


def _rewind(source: Path | io.BytesIO) -> Path | io.BytesIO:
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return source


def _read_dataset(source: Path | io.BytesIO, size: int) -> Dataset:
    head = _head(source)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise _classify_non_part10(source, head, size)
    try:
        ds = pydicom.dcmread(_rewind(source), defer_size=_DEFER_SIZE)
    except (EOFError, OSError) as err:
        raise _Skip("truncated", _describe(err)) from err
    except InvalidDicomError as err:
        raise _Skip("read_error", _describe(err)) from err
    _check_header_complete(ds, source, size)
    return ds


def _check_header_complete(ds: Dataset, source: Path | io.BytesIO, size: int) -> None:
    """pydicom stops silently at end of file; tell a cut-off file from a complete one."""
    ts = _text(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None))
    if len(ds) == 0:
        if not ts:
            raise _Skip("read_error", "no readable data elements after the 'DICM' prefix")
        # pydicom drops the whole dataset when encapsulated pixel data has no end delimiter
        try:
            header = pydicom.dcmread(_rewind(source), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - then the data set itself is cut: said below
            header = None
        if header is not None and len(header) > 0:
            raise _Skip("truncated", "file ends inside the compressed pixel data "
                                     "(no end-of-sequence delimiter: frames are missing)")
        raise _Skip("truncated", "file ends right after the file meta header")
    last_tag = max(ds.keys())
    keyword = keyword_for_tag(last_tag)
    if ts == DeflatedExplicitVRLittleEndian or keyword in _PIXEL_KEYWORDS:
        return  # deflated: offsets are not file offsets; pixel data: checked with geometry
    # Raw (unconverted) element: it still knows where its value starts and how long it is.
    last = ds.get_item(last_tag, keep_deferred=True)
    value_tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if value_tell is None or length is None or length == _UNDEFINED_LENGTH:
        return
    leftover = size - (value_tell + length)
    if leftover < 0:
        raise _Skip("truncated", f"file ends inside element {last_tag} {keyword or '(private)'}")
    if leftover < _MIN_ELEMENT_HEADER and leftover > 0:
        # pydicom silently drops a partial tag header at the end of the file.
        raise _Skip("truncated", f"file ends inside the element header after {last_tag}")


def _classify_non_part10(source: Path | io.BytesIO, head: bytes, size: int) -> _Skip:
    """Tell a raw (meta-less) DICOM dataset from a file that is not DICOM at all."""
    if not head:
        return _Skip("not_dicom", "empty file")
    try:
        if size <= _MAX_FORCE_READ_BYTES:
            ds = pydicom.dcmread(_rewind(source), force=True, stop_before_pixels=True, defer_size=_DEFER_SIZE)
            if _looks_like_uid(_text(ds.get("SOPInstanceUID"))) or _looks_like_uid(
                _text(ds.get("SOPClassUID"))
            ):
                return _Skip(
                    "no_file_meta",
                    "DICOM dataset without preamble/'DICM' header; re-export as a Part 10 file",
                )
    except Exception:  # noqa: BLE001 - anything pydicom chokes on is simply not DICOM
        pass
    inside = " inside the gzip file" if isinstance(source, io.BytesIO) else ""
    return _Skip("not_dicom", f"no DICOM preamble ('DICM' at byte 128){inside}")


def _looks_like_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and all(part.isdigit() for part in value.split("."))


def _check_decoder(ts: str) -> None:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as err:
        raise _Skip("unsupported_transfer_syntax", f"unknown transfer syntax {ts}") from err
    if not decoder.is_available:
        name = getattr(pydicom.uid.UID(ts), "name", ts)
        hint = install_hint(decoder.missing_dependencies)
        raise _Skip("unsupported_transfer_syntax",
                    f"no decoder installed for {name} ({ts})" + (f"; install one: {hint}" if hint else ""))


def install_hint(missing_dependencies: list[str]) -> str:
    """pydicom's "plugin - requires a>=1 and b" lines -> 'pip install a b or pip install c'."""
    options = []
    for entry in missing_dependencies:
        _plugin, _, needs = entry.partition(" - requires ")
        names = [re.split(r"[<>=!~ ]", part.strip(), maxsplit=1)[0] for part in re.split(r",| and ", needs)]
        packages = [_PLUGIN_PACKAGES.get(n, n) for n in names if n and n != "numpy"]
        if packages:
            options.append("pip install " + " ".join(packages))
    return " or ".join(options)


def _pixel_geometry(ds: Dataset) -> tuple[int, int, int, int, int]:
    """(rows, columns, frames, samples per pixel, bits allocated), validated."""
    try:
        rows = int(ds.Rows)
        columns = int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise _Skip("invalid_pixel_header", _describe(err)) from err
    if min(rows, columns, bits, samples, frames) < 1:
        raise _Skip(
            "invalid_pixel_header",
            f"rows={rows} columns={columns} bits={bits} samples={samples} frames={frames}",
        )
    return rows, columns, frames, samples, bits


def _check_length(ds: Dataset, size: int, ts: str, n_samples: int, bits: int) -> None:
    """Skip native (uncompressed) pixel data shorter than the header says it must be."""
    if "PixelData" not in ds:
        return
    elem = ds.get_item("PixelData", keep_deferred=True)
    # a deferred element is a RawDataElement, whose ``length`` is the header's value length
    if elem is None or getattr(elem, "length", None) == _UNDEFINED_LENGTH:
        return  # encapsulated (compressed): lengths are per fragment, checked by decoding
    expected = (n_samples + 7) // 8 if bits == 1 else n_samples * bits // 8
    if getattr(elem, "value", None) is not None:
        available = len(elem.value)
    elif ts == DeflatedExplicitVRLittleEndian:
        return  # offsets refer to the inflated stream, not the file
    else:
        # Deferred: the header's length may promise more bytes than the file still has.
        value_tell = getattr(elem, "value_tell", None)
        if value_tell is None:
            return
        available = min(int(getattr(elem, "length")), size - value_tell)
    if available < expected:
        raise _Skip("truncated", f"pixel data has {available} bytes, image needs {expected}")


def _trial_decode(source: Path | io.BytesIO, *, frames: int) -> np.ndarray:
    """Decode the first frame (stored values, no colour conversion), then the first ``frames``."""
    try:
        first = dicomio.read_frame(source, 0, raw=True)
        if frames > 1:
            dicomio.check_every_frame(source, frames)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a skip reason
        raise _Skip("pixel_decode_error", _describe(err)) from err
    if first.size == 0:
        raise _Skip("pixel_decode_error", "decoded pixel array is empty")
    return first


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip().strip("\x00").strip()



def _float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text[:_MAX_DETAIL]

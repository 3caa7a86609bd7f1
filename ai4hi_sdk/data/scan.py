"""Index a folder of DICOM files: what is readable, what is not and why.

:func:`scan_directory` walks a folder (sorted, so the result is deterministic), reads each
file's header with pydicom without loading pixel data, and sorts every file into either an
:class:`InstanceRecord` (a usable image) or a :class:`SkippedFile` with a reason code. It
never raises on a bad file: a hospital export always holds a few.

Privacy: the report holds no raw patient identifier. PatientID is kept only as a salted
SHA-256 pseudonym (``patient_key``) so that studies of one patient can be grouped locally;
names, birth dates and accession numbers are never read into it. The report itself stays
on the site (DESIGN.md, guarantee 1).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian

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
    "no_pixel_data": "no image pixel data (e.g. DICOMDIR, SR, RT plan, waveform)",
    "missing_uid": "Study, Series or SOP Instance UID missing",
    "missing_transfer_syntax": "file meta has no Transfer Syntax UID",
    "unsupported_transfer_syntax": "no pixel decoder available for the transfer syntax",
    "invalid_pixel_header": "Rows / Columns / Bits Allocated / Number of Frames invalid",
    "truncated": "pixel data shorter than the image description requires",
    "duplicate_instance": "SOP Instance UID already seen in another file",
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
_MAX_DETAIL = 200


@dataclass(frozen=True)
class InstanceRecord:
    """One readable image instance (a DICOM file with pixel data).

    ``path`` is POSIX, relative to the scanned root. ``pixel_spacing`` is (row, column)
    spacing in mm from PixelSpacing, else ImagerPixelSpacing (projection radiography).
    ``image_position`` is ImagePositionPatient (x, y, z) in mm, for ordering slices.
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("pixel_spacing", "image_position"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


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
    weighs as much as one radiograph.
    """

    root: str
    verify_pixels: bool
    instances: list[InstanceRecord] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def files_read(self) -> int:
        return len(self.instances)

    @property
    def files_skipped(self) -> int:
        return len(self.skipped)

    @property
    def files_seen(self) -> int:
        return self.files_read + self.files_skipped

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
        verify_pixels: also decode each image's pixel data (slower) and skip files that
            fail with ``pixel_decode_error``. Without it only headers and pixel-data
            lengths are checked.

    Returns:
        A :class:`ScanReport`; every file seen is in exactly one of ``instances`` or
        ``skipped``. Duplicate SOP Instance UIDs keep the first file in path order.

    Raises:
        UserError: ``root`` does not exist or is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"DICOM folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a folder: {root} (give the folder that holds the DICOM files)")
    report = ScanReport(root=str(root), verify_pixels=verify_pixels)
    seen_sop: dict[str, str] = {}
    for path in iter_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            with warnings.catch_warnings():
                # pydicom warns on every sloppy value; the skip reasons carry what matters.
                warnings.simplefilter("ignore")
                record = _read_instance(path, rel, verify_pixels=verify_pixels)
            if record.sop_instance_uid in seen_sop:
                raise _Skip(
                    "duplicate_instance",
                    f"same SOP Instance UID as {seen_sop[record.sop_instance_uid]}",
                )
        except _Skip as skip:
            report.skipped.append(SkippedFile(rel, skip.reason_code, skip.detail))
            continue
        except Exception as err:  # noqa: BLE001 - a bad file must never stop the scan
            report.skipped.append(SkippedFile(rel, "read_error", _describe(err)))
            continue
        seen_sop[record.sop_instance_uid] = rel
        report.instances.append(record)
    return report


def _read_instance(path: Path, rel: str, *, verify_pixels: bool = False) -> InstanceRecord:
    """Read one file's header into an :class:`InstanceRecord`; raise ``_Skip`` if unusable."""
    ds = _read_dataset(path)
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
    _check_length(ds, path, ts, rows * columns * frames * stored_samples, bits)
    # compressed data is always trial-decoded: an installed decoder (e.g. Pillow's JPEG 2000)
    # says nothing about whether this file's stream is intact
    if verify_pixels or _is_encapsulated(ds):
        _verify_decode(ds)

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
        pixel_spacing=_floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"), 2),
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        image_position=_floats(ds.get("ImagePositionPatient"), 3),
        sex=normalise_sex(ds.get("PatientSex")),
        age_years=years,
        age_band=age_band(years),
        manufacturer=normalise_manufacturer(manufacturer_raw),
        manufacturer_raw=manufacturer_raw,
        model=_text(ds.get("ManufacturerModelName")),
        patient_key=pseudonymise_patient_id(patient_id) if patient_id else None,
        file_size=path.stat().st_size,
    )


def pseudonymise_patient_id(patient_id: str) -> str:
    """Stable 16-hex-digit pseudonym of a PatientID (salted SHA-256); never the raw value."""
    return hashlib.sha256(f"{_PATIENT_SALT}:{patient_id}".encode()).hexdigest()[:16]


def _read_dataset(path: Path) -> Dataset:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as err:
        raise _Skip("read_error", _describe(err)) from err
    if len(head) < 132 or head[128:132] != b"DICM":
        raise _classify_non_part10(path, head)
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    except (EOFError, OSError) as err:
        raise _Skip("truncated", _describe(err)) from err
    except InvalidDicomError as err:
        raise _Skip("read_error", _describe(err)) from err
    _check_header_complete(ds, path)
    return ds


def _check_header_complete(ds: Dataset, path: Path) -> None:
    """pydicom stops silently at end of file; tell a cut-off file from a complete one."""
    ts = _text(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None))
    if len(ds) == 0:
        if ts:
            raise _Skip("truncated", "file ends right after the file meta header")
        raise _Skip("read_error", "no readable data elements after the 'DICM' prefix")
    last_tag = max(ds.keys())
    keyword = keyword_for_tag(last_tag)
    if ts == DeflatedExplicitVRLittleEndian or keyword in _PIXEL_KEYWORDS:
        return  # deflated: offsets are not file offsets; pixel data: checked with geometry
    # Raw (unconverted) element: it still knows where its value starts and how long it is.
    last = ds.get_item(last_tag, keep_deferred=True)
    value_tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if value_tell is None or length is None or length == _UNDEFINED_LENGTH:
        return
    leftover = path.stat().st_size - (value_tell + length)
    if leftover < 0:
        raise _Skip("truncated", f"file ends inside element {last_tag} {keyword or '(private)'}")
    if leftover < _MIN_ELEMENT_HEADER and leftover > 0:
        # pydicom silently drops a partial tag header at the end of the file.
        raise _Skip("truncated", f"file ends inside the element header after {last_tag}")


def _classify_non_part10(path: Path, head: bytes) -> _Skip:
    """Tell a raw (meta-less) DICOM dataset from a file that is not DICOM at all."""
    if not head:
        return _Skip("not_dicom", "empty file")
    try:
        if path.stat().st_size <= _MAX_FORCE_READ_BYTES:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, defer_size=_DEFER_SIZE)
            if _looks_like_uid(_text(ds.get("SOPInstanceUID"))) or _looks_like_uid(
                _text(ds.get("SOPClassUID"))
            ):
                return _Skip(
                    "no_file_meta",
                    "DICOM dataset without preamble/'DICM' header; re-export as a Part 10 file",
                )
    except Exception:  # noqa: BLE001 - anything pydicom chokes on is simply not DICOM
        pass
    return _Skip("not_dicom", "no DICOM preamble ('DICM' at byte 128)")


def _looks_like_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and all(part.isdigit() for part in value.split("."))


def _check_decoder(ts: str) -> None:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as err:
        raise _Skip("unsupported_transfer_syntax", f"unknown transfer syntax {ts}") from err
    if not decoder.is_available:
        name = getattr(pydicom.uid.UID(ts), "name", ts)
        missing = ", ".join(sorted(decoder.missing_dependencies))[:120]
        raise _Skip(
            "unsupported_transfer_syntax",
            f"{name} ({ts}): no decoder installed" + (f"; needs {missing}" if missing else ""),
        )


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


def _check_length(ds: Dataset, path: Path, ts: str, n_samples: int, bits: int) -> None:
    """Skip native (uncompressed) pixel data shorter than the header says it must be."""
    if "PixelData" not in ds:
        return
    elem = ds.get_item("PixelData", keep_deferred=True)
    if elem is None or elem.length == _UNDEFINED_LENGTH:
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
        available = min(elem.length, path.stat().st_size - value_tell)
    if available < expected:
        raise _Skip("truncated", f"pixel data has {available} bytes, image needs {expected}")


def _is_encapsulated(ds: Dataset) -> bool:
    elem = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    return elem is not None and elem.length == _UNDEFINED_LENGTH


def _verify_decode(ds: Dataset) -> None:
    try:
        arr = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - any decoder failure is a skip reason
        raise _Skip("pixel_decode_error", _describe(err)) from err
    if arr.size == 0:
        raise _Skip("pixel_decode_error", "decoded pixel array is empty")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip().strip("\x00").strip()


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text[:_MAX_DETAIL]

"""Open DICOM files the way sites export them, and decode one frame at a time.

* Part 10 files, plain or gzip-compressed (``.dcm.gz``, recognised by the gzip magic bytes, not the
  name): :func:`open_source` gives a path or an in-memory stream that pydicom reads alike.
* :func:`read_frame` decodes a single frame with pydicom's frame-wise decoder: from a path only that
  frame's bytes are read, so a 360-frame cine costs one frame of memory, not 360.
* :func:`compression_rank` orders copies of one image from best (uncompressed, never lossy) to worst
  (lossy compressed), for duplicate removal.
"""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels, pixel_array
from pydicom import uid as _uid

from ai4hi_sdk.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
#: a gzip member inflating past this is refused (a "zip bomb" must not exhaust a site's memory)
MAX_INFLATED_BYTES = 2 * 1024**3

#: transfer syntaxes whose encoding may lose information (DICOM PS3.5 Annex A / PS3.3 C.7.6.1.1.5)
LOSSY_TRANSFER_SYNTAXES = frozenset({
    _uid.JPEGBaseline8Bit, _uid.JPEGExtended12Bit, _uid.JPEGLSNearLossless, _uid.JPEG2000,
    _uid.JPEG2000MC, _uid.HTJ2K, *_uid.MPEGTransferSyntaxes, _uid.HEVCMP51, _uid.HEVCM10P51,
    "1.2.840.10008.1.2.4.112",  # JPEG XL (not named in pydicom 3.0)
})


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes."""
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def inflate(path: Path) -> bytes:
    """The decompressed content of a gzip file (at most :data:`MAX_INFLATED_BYTES`).

    Raises:
        OSError / EOFError / gzip.BadGzipFile: corrupt or cut-off gzip stream.
        ValueError: the content is larger than the limit.
    """
    with gzip.open(path, "rb") as fh:
        data = fh.read(MAX_INFLATED_BYTES + 1)
    if len(data) > MAX_INFLATED_BYTES:
        raise ValueError(f"gzip content larger than {MAX_INFLATED_BYTES // 1024**3} GiB")
    return data


def open_source(path: Path) -> Path | BinaryIO:
    """``path`` itself, or an in-memory stream of its content if it is gzip-compressed."""
    path = Path(path)
    return io.BytesIO(inflate(path)) if is_gzip(path) else path


def dcmread(path: Path, **kwargs: Any) -> Dataset:
    """:func:`pydicom.dcmread` of a plain or gzipped file, pydicom's value warnings silenced.

    Raises:
        UserError: the file cannot be read, naming it and the reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(open_source(path), **kwargs)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for a bad file
        raise UserError(f"cannot read DICOM file {path}: {type(err).__name__}: {err}") from err


def read_frame(source: Path | BinaryIO, index: int = 0, *, raw: bool = True) -> np.ndarray:
    """Decode frame ``index`` only. ``raw``: no colour-space conversion (YBR stays YBR).

    Returns the stored values, shape ``[rows, columns]`` or ``[rows, columns, samples]``.
    """
    if isinstance(source, io.BytesIO):
        source.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pixel_array(source, index=index, raw=raw)


def check_every_frame(source: Path | BinaryIO, frames: int) -> None:
    """Decode every one of ``frames`` frames, one at a time (memory: one frame).

    Raises whatever the decoder raises for a frame that cannot be decoded.
    """
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in iter_pixels(source, raw=True):
                pass
    except ValueError:
        # pydicom's frame iterator cannot fix some headers in place (e.g. a JPEG 2000 stream whose
        # signedness disagrees with PixelRepresentation) that its indexed decode handles
        for index in range(frames):
            read_frame(source, index)


def is_lossy(transfer_syntax: str, lossy_image_compression: Any = None) -> bool:
    """Whether the pixels went through lossy compression (now or earlier: LossyImageCompression 01)."""
    return transfer_syntax in LOSSY_TRANSFER_SYNTAXES or str(lossy_image_compression or "").strip() == "01"


def compression_rank(transfer_syntax: str, lossy: bool) -> tuple[int, int]:
    """Sort key of copies of one image: (lossy, compressed); smaller is better."""
    compressed = transfer_syntax not in _uid.UncompressedTransferSyntaxes
    return int(lossy), int(compressed)

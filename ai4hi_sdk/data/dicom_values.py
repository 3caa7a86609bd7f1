"""Numbers out of DICOM multi-valued attributes (DS/IS values as pydicom gives them).

Each function returns ``None`` for a missing value, a value that is not numeric or one with the
wrong number of components, so a header with a bad attribute reads as "absent", never as an error.
"""

from __future__ import annotations

from typing import Any


def float_tuple(value: Any, n: int) -> tuple[float, ...] | None:
    """``value`` (e.g. ImageOrientationPatient, 6 values) as ``n`` floats, or None."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def float_pair(value: Any) -> tuple[float, float] | None:
    """Two floats (e.g. PixelSpacing: row spacing, column spacing in mm), or None."""
    out = float_tuple(value, 2)
    return (out[0], out[1]) if out is not None else None


def float_triple(value: Any) -> tuple[float, float, float] | None:
    """Three floats (e.g. ImagePositionPatient x, y, z in mm), or None."""
    out = float_tuple(value, 3)
    return (out[0], out[1], out[2]) if out is not None else None

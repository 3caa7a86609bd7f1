"""Explicit, canonical, non-pickle wire encoding for secure-aggregation messages.

Format (all integers little-endian unless stated)::

    message := MAGIC "A4SA" | version u8 (=1) | kind: u16 length + UTF-8 | value (must be a dict)
    value   := tag u8 | payload
      0x00 None    | (nothing)
      0x01 False   | 0x02 True
      0x03 int     | i64
      0x04 float   | f64, finite only
      0x05 str     | u32 length | UTF-8
      0x06 bytes   | u32 length | raw
      0x07 list    | u32 count  | value*
      0x08 dict    | u32 count  | (key: u16 length + UTF-8, value)*   keys unique, sorted by UTF-8 bytes
      0x09 ndarray | dtype code u8 | ndim u8 (<= 8) | dims u64* | u64 byte length | raw little-endian data

Allowed array dtypes: uint8, uint32, int32, int64, float32, float64 (codes 1..6). The encoding is
canonical -- one value has exactly one encoding (dict keys sorted, no alternatives) -- so encoded
messages can be hashed and signed. Decoding is strict: unknown tags or dtypes, truncated or trailing
bytes, lengths that disagree with shapes, non-finite floats, unsorted or duplicate keys, invalid
UTF-8 or nesting deeper than 16 raise :class:`WireFormatError` with the offending path, and every
declared length is checked against the bytes actually present before anything is allocated.
Decoded arrays are read-only zero-copy views of the input unless ``copy_arrays=True``.

:func:`decode_message` can also validate the message against a schema (:class:`Bytes`,
:class:`Array`, :class:`ListOf`, :class:`MapOf`, nested dicts of specs, or the Python types
``str``, ``int``, ``float``, ``bool``, ``bytes``, ``type(None)``); a schema dict requires exactly its
keys.

Shamir shares have their own fixed-length encoding (:func:`encode_share`): ``x`` as u32 big-endian
followed by ``y`` as 66 bytes big-endian (70 bytes).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .shamir import PRIME_BYTES, Share, ShamirError

__all__ = [
    "MAGIC",
    "VERSION",
    "WireFormatError",
    "encode_message",
    "decode_message",
    "encode_value",
    "decode_value",
    "Bytes",
    "Array",
    "ListOf",
    "MapOf",
    "validate",
    "SHARE_BYTES",
    "encode_share",
    "decode_share",
]

MAGIC = b"A4SA"
VERSION = 1
MAX_DEPTH = 16
MAX_NDIM = 8
SHARE_BYTES = 4 + PRIME_BYTES

_T_NONE, _T_FALSE, _T_TRUE, _T_INT, _T_FLOAT, _T_STR, _T_BYTES, _T_LIST, _T_DICT, _T_ARRAY = range(10)
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u4"),
    3: np.dtype("<i4"),
    4: np.dtype("<i8"),
    5: np.dtype("<f4"),
    6: np.dtype("<f8"),
}
_DTYPE_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


class WireFormatError(ValueError):
    """A message could not be encoded, or failed strict decoding / schema validation."""


# ----------------------------------------------------------------------------- encoding


def _enc_str16(s: str, path: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise WireFormatError(f"{path}: string too long for a u16-length field ({len(b)} bytes)")
    return struct.pack("<H", len(b)) + b


def _encode(value: Any, parts: list, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireFormatError(f"{path}: nesting deeper than {MAX_DEPTH}")
    if value is None:
        parts.append(bytes([_T_NONE]))
    elif value is True or value is False or isinstance(value, np.bool_):
        parts.append(bytes([_T_TRUE if value else _T_FALSE]))
    elif isinstance(value, (int, np.integer)):
        v = int(value)
        if not _I64_MIN <= v <= _I64_MAX:
            raise WireFormatError(f"{path}: integer {v} does not fit in int64")
        parts.append(bytes([_T_INT]) + struct.pack("<q", v))
    elif isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            raise WireFormatError(f"{path}: non-finite float {f}")
        parts.append(bytes([_T_FLOAT]) + struct.pack("<d", f))
    elif isinstance(value, str):
        b = value.encode("utf-8")
        parts.append(bytes([_T_STR]) + struct.pack("<I", len(b)) + b)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        if len(b) > 0xFFFFFFFF:
            raise WireFormatError(f"{path}: bytes field too long")
        parts.append(bytes([_T_BYTES]) + struct.pack("<I", len(b)))
        parts.append(b)
    elif isinstance(value, np.ndarray):
        code = _DTYPE_CODES.get(value.dtype.newbyteorder("=")) if value.dtype.byteorder in "=<|>" else None
        if code is None or value.dtype.kind not in "uif":
            raise WireFormatError(
                f"{path}: array dtype {value.dtype} not allowed (uint8, uint32, int32, int64, float32, float64)"
            )
        if value.ndim > MAX_NDIM:
            raise WireFormatError(f"{path}: array has {value.ndim} dimensions (max {MAX_NDIM})")
        le = np.asarray(value, dtype=_DTYPES[code], order="C")  # keeps 0-d arrays 0-d
        header = bytes([_T_ARRAY, code, le.ndim]) + struct.pack(f"<{le.ndim}Q", *le.shape)
        parts.append(header + struct.pack("<Q", le.nbytes))
        parts.append(le.data.cast("B") if le.nbytes else b"")
    elif isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise WireFormatError(f"{path}: dict keys must be strings, got {type(k).__name__}")
            items.append((k.encode("utf-8"), k, v))
        items.sort(key=lambda it: it[0])
        parts.append(bytes([_T_DICT]) + struct.pack("<I", len(items)))
        for kb, k, v in items:
            parts.append(_enc_str16(k, path))
            _encode(v, parts, f"{path}.{k}", depth + 1)
    elif isinstance(value, (list, tuple)):
        parts.append(bytes([_T_LIST]) + struct.pack("<I", len(value)))
        for i, v in enumerate(value):
            _encode(v, parts, f"{path}[{i}]", depth + 1)
    else:
        raise WireFormatError(f"{path}: type {type(value).__name__} cannot go on the wire")


def encode_value(value: Any) -> bytes:
    """Encode one value (no header)."""
    parts: list = []
    _encode(value, parts, "$", 0)
    return b"".join(parts)


def encode_message(kind: str, fields: Mapping[str, Any]) -> bytes:
    """Encode a message: header (magic, version, ``kind``) and the ``fields`` dict."""
    if not isinstance(kind, str) or not kind:
        raise WireFormatError("message kind must be a non-empty string")
    if not isinstance(fields, Mapping):
        raise WireFormatError("message fields must be a dict")
    parts: list = [MAGIC, bytes([VERSION]), _enc_str16(kind, "kind")]
    _encode(fields, parts, "$", 0)
    return b"".join(parts)


# ----------------------------------------------------------------------------- decoding


class _Reader:
    __slots__ = ("buf", "pos", "copy")

    def __init__(self, data: bytes | bytearray | memoryview, copy: bool):
        self.buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
        self.pos = 0
        self.copy = copy

    def take(self, n: int, path: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise WireFormatError(f"{path}: truncated message (need {n} bytes at offset {self.pos}, have "
                                  f"{len(self.buf) - self.pos})")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, path: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), path))

    def utf8(self, n: int, path: str) -> str:
        try:
            return str(self.take(n, path), "utf-8")
        except UnicodeDecodeError as exc:
            raise WireFormatError(f"{path}: invalid UTF-8") from exc


def _decode(r: _Reader, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise WireFormatError(f"{path}: nesting deeper than {MAX_DEPTH}")
    (tag,) = r.unpack("<B", path)
    if tag == _T_NONE:
        return None
    if tag == _T_FALSE:
        return False
    if tag == _T_TRUE:
        return True
    if tag == _T_INT:
        return r.unpack("<q", path)[0]
    if tag == _T_FLOAT:
        v = r.unpack("<d", path)[0]
        if not math.isfinite(v):
            raise WireFormatError(f"{path}: non-finite float")
        return v
    if tag == _T_STR:
        (n,) = r.unpack("<I", path)
        return r.utf8(n, path)
    if tag == _T_BYTES:
        (n,) = r.unpack("<I", path)
        return bytes(r.take(n, path))
    if tag == _T_LIST:
        (n,) = r.unpack("<I", path)
        if n > len(r.buf) - r.pos:  # every element takes at least one byte
            raise WireFormatError(f"{path}: list count {n} exceeds the remaining bytes")
        return [_decode(r, f"{path}[{i}]", depth + 1) for i in range(n)]
    if tag == _T_DICT:
        (n,) = r.unpack("<I", path)
        if n > (len(r.buf) - r.pos) // 3:  # each entry takes at least 3 bytes
            raise WireFormatError(f"{path}: dict count {n} exceeds the remaining bytes")
        out: dict[str, Any] = {}
        prev: bytes | None = None
        for _ in range(n):
            (klen,) = r.unpack("<H", path)
            kb = bytes(r.take(klen, path))
            if prev is not None and kb <= prev:
                raise WireFormatError(f"{path}: dict keys not strictly sorted (duplicate or non-canonical)")
            prev = kb
            try:
                k = kb.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise WireFormatError(f"{path}: invalid UTF-8 in key") from exc
            out[k] = _decode(r, f"{path}.{k}", depth + 1)
        return out
    if tag == _T_ARRAY:
        code, ndim = r.unpack("<BB", path)
        dtype = _DTYPES.get(code)
        if dtype is None:
            raise WireFormatError(f"{path}: unknown array dtype code {code}")
        if ndim > MAX_NDIM:
            raise WireFormatError(f"{path}: array has {ndim} dimensions (max {MAX_NDIM})")
        shape = r.unpack(f"<{ndim}Q", path) if ndim else ()
        (nbytes,) = r.unpack("<Q", path)
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != nbytes:
            raise WireFormatError(
                f"{path}: array of shape {tuple(shape)} and dtype {dtype.name} needs {count * dtype.itemsize} "
                f"bytes, header says {nbytes}"
            )
        raw = r.take(nbytes, path)
        arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
        if r.copy:
            arr = arr.astype(dtype.newbyteorder("="), copy=True)
        elif dtype.byteorder == "<" and np.little_endian:
            arr = arr.view(dtype.newbyteorder("="))
        return arr
    raise WireFormatError(f"{path}: unknown value tag {tag}")


def decode_value(data: bytes | bytearray | memoryview, *, copy_arrays: bool = False) -> Any:
    """Decode one value encoded by :func:`encode_value` (the whole input, no trailing bytes)."""
    r = _Reader(data, copy_arrays)
    v = _decode(r, "$", 0)
    if r.pos != len(r.buf):
        raise WireFormatError(f"$: {len(r.buf) - r.pos} trailing bytes")
    return v


def decode_message(
    data: bytes | bytearray | memoryview,
    *,
    kind: str | None = None,
    schema: Mapping[str, Any] | None = None,
    copy_arrays: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Decode a message; returns ``(kind, fields)``.

    Args:
        kind: if given, the message must be of this kind.
        schema: if given, ``fields`` must match it exactly (see :func:`validate`).
        copy_arrays: return writable copies instead of read-only views of ``data``.
    """
    r = _Reader(data, copy_arrays)
    if bytes(r.take(4, "header")) != MAGIC:
        raise WireFormatError("header: not a secure-aggregation message (bad magic)")
    (version,) = r.unpack("<B", "header")
    if version != VERSION:
        raise WireFormatError(f"header: unsupported version {version} (expected {VERSION})")
    (klen,) = r.unpack("<H", "header")
    got_kind = r.utf8(klen, "header")
    if kind is not None and got_kind != kind:
        raise WireFormatError(f"header: expected a {kind!r} message, got {got_kind!r}")
    fields = _decode(r, "$", 0)
    if not isinstance(fields, dict):
        raise WireFormatError("$: message body must be a dict")
    if r.pos != len(r.buf):
        raise WireFormatError(f"$: {len(r.buf) - r.pos} trailing bytes")
    if schema is not None:
        validate(fields, schema)
    return got_kind, fields


# ----------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Bytes:
    """A bytes field, optionally of an exact length (or length range)."""

    length: int | None = None
    min_length: int = 0
    max_length: int | None = None


@dataclass(frozen=True)
class Array:
    """An array field of one dtype; ``shape`` entries of ``None`` match any size."""

    dtype: Any
    shape: tuple[int | None, ...] | None = None


@dataclass(frozen=True)
class ListOf:
    """A list whose elements all match ``item``."""

    item: Any
    min_length: int = 0
    max_length: int | None = None


@dataclass(frozen=True)
class MapOf:
    """A dict with arbitrary string keys whose values all match ``value``."""

    value: Any


def validate(value: Any, spec: Any, path: str = "$") -> None:
    """Check ``value`` against ``spec``; raise :class:`WireFormatError` naming the path on mismatch."""
    if isinstance(spec, Mapping):
        if not isinstance(value, dict):
            raise WireFormatError(f"{path}: expected a dict, got {_tname(value)}")
        missing = sorted(set(spec) - set(value))
        extra = sorted(set(value) - set(spec))
        if missing or extra:
            raise WireFormatError(f"{path}: missing fields {missing}, unexpected fields {extra}")
        for k, sub in spec.items():
            validate(value[k], sub, f"{path}.{k}")
    elif isinstance(spec, Bytes):
        if not isinstance(value, bytes):
            raise WireFormatError(f"{path}: expected bytes, got {_tname(value)}")
        if spec.length is not None and len(value) != spec.length:
            raise WireFormatError(f"{path}: expected {spec.length} bytes, got {len(value)}")
        if len(value) < spec.min_length or (spec.max_length is not None and len(value) > spec.max_length):
            raise WireFormatError(f"{path}: length {len(value)} out of range")
    elif isinstance(spec, Array):
        if not isinstance(value, np.ndarray):
            raise WireFormatError(f"{path}: expected an array, got {_tname(value)}")
        want = np.dtype(spec.dtype)
        if value.dtype.newbyteorder("=") != want.newbyteorder("="):
            raise WireFormatError(f"{path}: expected dtype {want.name}, got {value.dtype.name}")
        if spec.shape is not None:
            if len(spec.shape) != value.ndim or any(w is not None and w != g for w, g in zip(spec.shape, value.shape)):
                raise WireFormatError(f"{path}: expected shape {spec.shape}, got {value.shape}")
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise WireFormatError(f"{path}: expected a list, got {_tname(value)}")
        if len(value) < spec.min_length or (spec.max_length is not None and len(value) > spec.max_length):
            raise WireFormatError(f"{path}: list length {len(value)} out of range")
        for i, v in enumerate(value):
            validate(v, spec.item, f"{path}[{i}]")
    elif isinstance(spec, MapOf):
        if not isinstance(value, dict):
            raise WireFormatError(f"{path}: expected a dict, got {_tname(value)}")
        for k, v in value.items():
            validate(v, spec.value, f"{path}.{k}")
    elif spec is bool:
        if not isinstance(value, bool):
            raise WireFormatError(f"{path}: expected bool, got {_tname(value)}")
    elif spec is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise WireFormatError(f"{path}: expected int, got {_tname(value)}")
    elif spec is float:
        if not isinstance(value, float):
            raise WireFormatError(f"{path}: expected float, got {_tname(value)}")
    elif spec in (str, bytes, type(None)):
        if type(value) is not spec:
            raise WireFormatError(f"{path}: expected {spec.__name__}, got {_tname(value)}")
    elif spec is Any:
        pass
    else:
        raise TypeError(f"unsupported schema spec {spec!r} at {path}")


def _tname(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array[{v.dtype.name}]"
    return type(v).__name__


# ----------------------------------------------------------------------------- shares


def encode_share(share: Share) -> bytes:
    """Fixed-length (70-byte) encoding of a Shamir share: x u32 big-endian, y 66 bytes big-endian."""
    if not isinstance(share, Share):
        raise WireFormatError(f"expected a Share, got {type(share).__name__}")
    return struct.pack(">I", share.x) + share.y.to_bytes(PRIME_BYTES, "big")


def decode_share(data: bytes | bytearray) -> Share:
    """Strict inverse of :func:`encode_share`."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != SHARE_BYTES:
        n = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
        raise WireFormatError(f"a Shamir share is {SHARE_BYTES} bytes, got {n}")
    (x,) = struct.unpack(">I", bytes(data[:4]))
    y = int.from_bytes(bytes(data[4:]), "big")
    try:
        return Share(x, y)
    except ShamirError as exc:
        raise WireFormatError(f"invalid share: {exc}") from exc

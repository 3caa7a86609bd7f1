"""Wire encoding: round trips, canonical form, strict decoding, schemas, and no pickle anywhere."""

from __future__ import annotations

import pathlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ai4hi_sdk.privacy.secagg as secagg_pkg
from ai4hi_sdk.privacy.secagg.primitives.encoding import (
    MAGIC,
    Array,
    Bytes,
    ListOf,
    MapOf,
    WireFormatError,
    decode_message,
    decode_value,
    encode_message,
    encode_value,
)

KEY_MSG_SCHEMA = {
    "site": str,
    "job_id": str,
    "round": int,
    "public_key": Bytes(32),
    "signature": Bytes(min_length=1, max_length=512),
}
MASKED_SCHEMA = {"site": str, "round": int, "vector": Array(np.uint32, (None,)), "meta": MapOf(float)}


def _masked(vec=None):
    return {
        "site": "hospital-1",
        "round": 4,
        "vector": np.arange(10, dtype=np.uint32) if vec is None else vec,
        "meta": {"n": 1.0},
    }


def test_round_trip_with_schema():
    data = encode_message("masked-input", _masked())
    kind, fields = decode_message(data, kind="masked-input", schema=MASKED_SCHEMA)
    assert kind == "masked-input"
    assert fields["vector"].dtype == np.uint32 and np.array_equal(fields["vector"], np.arange(10))
    assert not fields["vector"].flags.writeable  # zero-copy view of the message
    _, copied = decode_message(data, copy_arrays=True)
    assert copied["vector"].flags.writeable


def test_encoding_is_canonical():
    a = encode_message("k", {"b": 1, "a": [b"x", None, True, 2.5], "c": {"z": 1, "y": 2}})
    b = encode_message("k", {"c": {"y": 2, "z": 1}, "a": (b"x", None, True, 2.5), "b": 1})
    assert a == b


def test_array_bytes_are_little_endian_and_big_endian_input_is_normalised():
    v = np.array([1, 2], dtype=">u4")
    data = encode_value(v)
    assert data.endswith(struct.pack("<2I", 1, 2))
    assert np.array_equal(decode_value(data), [1, 2])
    assert decode_value(data).dtype == np.uint32


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(values)
def test_round_trip_property(v):
    assert decode_value(encode_value(v)) == (list(v) if isinstance(v, tuple) else v)


@pytest.mark.parametrize("dtype", ["uint8", "uint32", "int32", "int64", "float32", "float64"])
@pytest.mark.parametrize("shape", [(0,), (3,), (2, 3), ()])
def test_array_round_trip(dtype, shape):
    a = (np.arange(int(np.prod(shape))) % 100).astype(dtype).reshape(shape)
    b = decode_value(encode_value(a))
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape and np.array_equal(a, b)


def test_strict_decoding_rejects_malformed_input():
    good = encode_message("masked-input", _masked())
    cases = {
        "bad magic": b"XXXX" + good[4:],
        "unsupported version": good[:4] + b"\x02" + good[5:],
        "truncated": good[:-1],
        "trailing": good + b"\x00",
    }
    for match, data in cases.items():
        with pytest.raises(WireFormatError, match=match):
            decode_message(data)
    with pytest.raises(WireFormatError, match="expected a 'key' message"):
        decode_message(good, kind="key")


def test_array_header_lies_are_rejected():
    raw = encode_value(np.arange(4, dtype=np.uint32))
    # header: tag, dtype code, ndim, dim (u64), nbytes (u64), data
    tag, code, ndim = raw[0], raw[1], raw[2]
    bad_len = raw[:11] + struct.pack("<Q", 15) + raw[19:]
    with pytest.raises(WireFormatError, match="needs 16 bytes"):
        decode_value(bad_len)
    bad_dim = raw[:3] + struct.pack("<Q", 2**40) + raw[11:]
    with pytest.raises(WireFormatError, match="needs"):
        decode_value(bad_dim)
    bad_dtype = bytes([tag, 99, ndim]) + raw[3:]
    with pytest.raises(WireFormatError, match="dtype code 99"):
        decode_value(bad_dtype)
    assert code == 2


def test_hostile_counts_do_not_allocate():
    with pytest.raises(WireFormatError, match="exceeds the remaining bytes"):
        decode_value(bytes([7]) + struct.pack("<I", 2**32 - 1))
    with pytest.raises(WireFormatError, match="exceeds the remaining bytes"):
        decode_value(bytes([8]) + struct.pack("<I", 2**32 - 1))
    with pytest.raises(WireFormatError, match="truncated"):
        decode_value(bytes([6]) + struct.pack("<I", 2**31))


def test_non_canonical_dicts_and_bad_values_are_rejected():
    def dict_bytes(keys):
        out = bytes([8]) + struct.pack("<I", len(keys))
        for k in keys:
            out += struct.pack("<H", len(k)) + k + bytes([0])
        return out

    assert decode_value(dict_bytes([b"a", b"b"])) == {"a": None, "b": None}
    with pytest.raises(WireFormatError, match="sorted"):
        decode_value(dict_bytes([b"b", b"a"]))
    with pytest.raises(WireFormatError, match="sorted"):
        decode_value(dict_bytes([b"a", b"a"]))
    with pytest.raises(WireFormatError, match="UTF-8"):
        decode_value(bytes([5]) + struct.pack("<I", 1) + b"\xff")
    with pytest.raises(WireFormatError, match="non-finite"):
        decode_value(bytes([4]) + struct.pack("<d", float("nan")))
    with pytest.raises(WireFormatError, match="unknown value tag"):
        decode_value(bytes([42]))
    nested = None
    for _ in range(20):
        nested = [nested]
    with pytest.raises(WireFormatError, match="nesting"):
        encode_value(nested)


def test_unencodable_values_are_rejected():
    for bad in (object(), {1: "x"}, 2**64, float("inf"), np.zeros(2, dtype=np.complex64), np.zeros(2, dtype=bool),
                np.zeros(2, dtype="U1")):
        with pytest.raises(WireFormatError):
            encode_value(bad)


def test_schema_validation():
    msg = {"site": "h1", "job_id": "j", "round": 1, "public_key": bytes(32), "signature": b"s"}
    decode_message(encode_message("key", msg), schema=KEY_MSG_SCHEMA)
    bad = [
        (dict(msg, public_key=bytes(31)), "expected 32 bytes"),
        (dict(msg, round="1"), "expected int"),
        (dict(msg, round=True), "expected int"),
        (dict(msg, extra=1), "unexpected fields \\['extra'\\]"),
        ({k: v for k, v in msg.items() if k != "site"}, "missing fields \\['site'\\]"),
        (dict(msg, signature=b""), "out of range"),
    ]
    for fields, match in bad:
        with pytest.raises(WireFormatError, match=match):
            decode_message(encode_message("key", fields), schema=KEY_MSG_SCHEMA)
    wrong_dtype = _masked(np.arange(10, dtype=np.int32))
    with pytest.raises(WireFormatError, match="expected dtype uint32, got int32"):
        decode_message(encode_message("m", wrong_dtype), schema=MASKED_SCHEMA)
    wrong_shape = _masked(np.zeros((2, 5), dtype=np.uint32))
    with pytest.raises(WireFormatError, match="expected shape"):
        decode_message(encode_message("m", wrong_shape), schema=MASKED_SCHEMA)
    with pytest.raises(WireFormatError, match=r"\$\.names\[1\]: expected str"):
        decode_message(encode_message("m", {"names": ["a", 1]}), schema={"names": ListOf(str)})
    with pytest.raises(WireFormatError, match="expected shape"):
        from ai4hi_sdk.privacy.secagg.primitives.encoding import validate

        validate(np.zeros(5, dtype=np.uint32), Array(np.uint32, (4,)))


def test_message_starts_with_magic():
    assert encode_message("x", {}).startswith(MAGIC)


def test_no_pickle_anywhere_in_secagg():
    root = pathlib.Path(secagg_pkg.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        for banned in ("import pickle", "from pickle", "cPickle", "dill", "np.load(", "allow_pickle=True"):
            assert banned not in text, f"{path}: {banned}"

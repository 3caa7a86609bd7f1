"""The compiled fused-masking paths give bit-for-bit the masks of the pure path (cryptography's
AES-128-CTR keystream + numpy), for every length, sign, mask count, nonce and counter carry."""
from __future__ import annotations

import numpy as np
import pytest

from ai4hi_sdk.privacy.secagg.primitives import masking
from ai4hi_sdk.privacy.secagg.primitives.keystream import keystream_bytes


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
IMPLS = [i for i, need in (("aesni", {"aes", "sse4_1", "ssse3"}), ("vaes512", {"aes", "vaes", "avx512f", "avx512bw"}))
         if need <= FLAGS]
if not IMPLS:  # pragma: no cover - a CPU without AES-NI: only the pure path exists there
    pytest.skip("this CPU has no AES-NI: the fused paths cannot run here (the pure path is tested elsewhere)",
                allow_module_level=True)


def test_extension_is_built_and_used_by_default():
    assert masking._fastmask is not None, "build the extension: pip install -e . (gcc and Python headers)"
    features = masking._fastmask.features()
    assert features["aesni"] and features["vaes512"] == ("vaes512" in IMPLS)
    assert masking.masking_impl() == IMPLS[-1]
    assert masking.masking_impl("chacha20") == masking.masking_impl("aes-256-ctr") == "numpy"


def _apply(impl, vector, terms, nonce):
    previous = masking.set_masking_impl(impl)
    try:
        return masking.apply_masks(vector.copy(), terms, nonce=nonce)
    finally:
        masking.set_masking_impl(previous)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 31, 32, 33, 127, 128, 129, 255, 4099, 65_541])
def test_fused_masks_equal_the_pure_path(impl, n):
    rng = np.random.default_rng(n)
    vector = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    for k in (1, 2, 9):
        terms = [(rng.bytes(32), int(rng.choice([1, -1]))) for _ in range(k)]
        nonce = rng.bytes(16) if k == 2 else bytes(16)
        assert np.array_equal(_apply(impl, vector, terms, nonce), _apply("numpy", vector, terms, nonce))


@pytest.mark.parametrize("impl", IMPLS)
def test_counters_that_carry_across_64_bits(impl):
    """The initial counter block seed[16:] ^ nonce close to 2**64 - 1 in its low half (and 2**128 - 1
    overall): the fused paths must carry exactly like OpenSSL's 128-bit big-endian increment."""
    rng = np.random.default_rng(1)
    vector = rng.integers(0, 2**32, 10_000, dtype=np.uint64).astype(np.uint32)
    for tail in (b"\xff" * 7 + b"\xf0", b"\xff" * 8, b"\xff" * 7 + b"\xfe"):
        for head in (rng.bytes(8), b"\xff" * 8):
            seed = rng.bytes(16) + head + tail
            terms = [(seed, 1), (rng.bytes(16) + head + tail, -1)]
            assert np.array_equal(_apply(impl, vector, terms, bytes(16)), _apply("numpy", vector, terms, bytes(16)))
    # and the reference itself: a mask of a zero vector is the raw keystream
    seed = rng.bytes(16) + b"\xff" * 16
    zero = np.zeros(1000, np.uint32)
    expected = np.frombuffer(keystream_bytes(seed, 4000), dtype="<u4")
    assert np.array_equal(_apply(impl, zero, [(seed, 1)], bytes(16)), expected)


def test_bad_arguments_are_refused():
    fm = masking._fastmask
    with pytest.raises(ValueError, match="16 key bytes"):
        fm.apply(np.zeros(4, np.uint32), b"k" * 16, b"c" * 15, b"\x01")
    with pytest.raises(ValueError, match="uint32 words"):
        fm.apply(bytearray(6), b"k" * 16, b"c" * 16, b"\x01")
    with pytest.raises(ValueError, match="impl"):
        fm.apply(np.zeros(4, np.uint32), b"k" * 16, b"c" * 16, b"\x01", "fast")
    with pytest.raises(TypeError):  # read-only buffers cannot be masked in place
        fm.apply(bytes(16), b"k" * 16, b"c" * 16, b"\x01")
    with pytest.raises(ValueError):
        masking.set_masking_impl("gpu")

"""Fixed-point quantisation of float32 vectors into Z_2^32, stochastic rounding, overflow guard.

Representation
--------------
A float ``x`` is clipped to ``[-c, c]`` (``c`` = :attr:`QuantizationConfig.clip_f32`, the largest
float32 not above ``clip``), optionally multiplied by a weight ``a`` with ``|a| <= 1`` (weight
folding, below), scaled by ``s = 2**e`` and stochastically rounded to an integer ``q``, stored as
its two's-complement uint32 (so ``-1`` is ``0xFFFFFFFF``). Sums are taken mod 2**32 (masking
needs nothing else) and read back as int32: the *centred* representation, which is exact as long
as the true integer sum lies in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``.

The scale is a power of two so that ``x * s`` is exact in float32: the only rounding is the
intended stochastic one. Stochastic rounding is ``q = floor(y + u)``, ``y = c(x) * a * s``, with
``u = k * 2**-b`` and ``k`` a ``b``-bit word (``b = rounding_bits``, 16 by default, or 8) of the
AES-CTR/ChaCha20 keystream of a seed (fresh from the OS by default) -- ~10x faster than numpy's
generator here, and 16 rather than 23 random bits per element halve the keystream. ``E[q] - y`` lies
in ``(-2**-b, 0]`` levels from the grid, plus float32 rounding of ``y + u`` (at most
``2**-24 |y|``, only for large ``|y|``): negligible next to the ``1/s`` worst case.

Why the keystream for the rounding randomness: it must be unpredictable to the server (which sees
the sum of the rounded values; predictable rounding would leak fractional parts of the inputs) but
need not be secret beyond that. AES-CTR happens to be both cryptographic and the fastest generator
at hand: 4.2-4.8 GB/s on one core of the development machine against 0.8-2.5 GB/s for numpy's
``random_raw`` (PCG64, SFC64, Philox, MT19937) and 0.6 GB/s for ``Generator.bytes``.

Hot loop per 32 Ki-element chunk (input, output and scratch stay in L2; no allocation):
``X = x * s 2**b`` (exact, power of two; the only pass that reads ``x`` from memory), max and min of
``X`` (in cache; they catch NaN/inf -- refused, fail closed, after a look at ``x`` itself to tell a
huge finite value that overflowed to inf, which is clipped -- and tell whether the chunk needs
clipping at all; an update already clipped to ``c``, e.g. by client-level DP with element clip >= its
L2 clip, never does), clip ``X`` to ``+-c s 2**b`` if needed (``== clip(x) * s 2**b`` exactly),
``* a`` if weights are folded, keystream, ``uint -> float32``, add, ``* 2**-b`` (exact), floor,
convert to int32 into ``out``. About 2.5 ns per element on one core: ~1 ns of it is memory traffic
(read ``x``, write ``out``), ~0.45 ns the 2 bytes of keystream, the rest seven in-cache numpy
passes. Measured throughput: ``benchmarks/secagg_primitives.py``.

Overflow guard
--------------
Per site ``|q| <= floor(c * s) + 1``, so a sum over ``n`` sites cannot leave the centred range iff
``n * (floor(c * s) + 1) <= 2**(bits-1) - 1``. :func:`check_no_overflow` refuses anything else;
:class:`QuantizationConfig` picks the largest power-of-two scale that passes (or checks the one you
give), and :func:`dequantize_sum` refuses ``n_summed > n_sites``.

Error bound (what the protocol tests compare secure aggregation with plain FedAvg against)
------------------------------------------------------------------------------------------
Let ``x_k`` be site ``k``'s float32 vector, ``x~_k = clip(x_k, -c, c)``, ``n`` the number of vectors
summed, ``s`` the scale and ``u = 2**-24`` (float32 unit roundoff). For every element::

    |dequantize_mean(sum_k q_k) - (1/n) sum_k x~_k|  <=  1/s + 2**-21 * (c + 1/s)  =  error_bound(cfg)

Proof sketch: ``|q_k - y_k| <= 1`` always (``floor`` of the monotonically rounded ``y + u``, ``y``
exact), and ``y_k = s * fl(fl32(a_k) x~_k)`` is within ``2 u c s`` of ``s a_k x~_k`` (the product's
rounding and that of the weight to float32; exact when ``a_k = 1``).
So the exact integer sum ``Q`` is within ``n (1 + 2 u c s)`` of ``s sum_k a_k x~_k``. Dequantisation
computes ``fl(fl(Q) * fl(1 / (n s)))`` in float32: three roundings, relative error
``< 3u (1 + u)^2`` of a value bounded by ``c + 1/s``. Dividing by ``n s`` and adding up:
``1/s + 2 u c + 3.01 u (c + 1/s) <= 1/s + 2**-21 (c + 1/s)``. The first term is the
quantisation step; the second is float32 precision of the output (in practice the observed error is
``<= 1/s`` plus half a float32 ulp of the result). For a weighted mean with weights
``w_k <= w_max`` folded in as ``a_k = w_k / w_max`` and ``W = sum_k w_k``,
:func:`weighted_error_bound` = ``(n * w_max / W) * error_bound(cfg)``. **Clipping error** comes on
top and is data-dependent: ``|(1/n) sum_k x~_k - (1/n) sum_k x_k| <= (1/n) sum_k max(|x_k| - c, 0)``,
elementwise (:func:`clipping_error`); it is zero when the update was already clipped (e.g. by
client-level DP). A reference mean computed in float32 has its own rounding error (up to ``~n u
max|x|``): compare against a float64 reference, or add that term.

Weight folding and extra coordinates
------------------------------------
To average with sample weights without revealing any site's weight, a site quantises
``(w_k / w_max) * x_k`` (``multiplier=``, :func:`weight_multiplier`) and sends ``w_k`` as one more
exact integer coordinate (:func:`encode_counts`); the server divides the unmasked sums
(:func:`dequantize_weighted_mean`). Metric sums and counts go the same way, each segment with its own
config. :class:`VectorLayout` names the segments of the one uint32 vector that gets masked.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .keystream import CHUNK_BYTES, DEFAULT_CIPHER, Keystream

__all__ = [
    "QuantizationConfig",
    "OverflowRiskError",
    "VectorLayout",
    "check_no_overflow",
    "max_abs_level",
    "quantize",
    "dequantize_sum",
    "dequantize_mean",
    "dequantize_weighted_mean",
    "error_bound",
    "weighted_error_bound",
    "clipping_error",
    "weight_multiplier",
    "encode_counts",
    "decode_count_sums",
    "check_counts_no_overflow",
    "QUANT_CHUNK",
    "SR_NONCE",
]

#: Elements per chunk in the quantisation loop: the input, output and scratch chunks (128 KiB each,
#: 64 KiB of keystream) stay in L2 together (64 Ki did not: ~8% slower on the development machine).
QUANT_CHUNK = 32 * 1024
assert 2 * QUANT_CHUNK + 2 <= CHUNK_BYTES  # one keystream call per chunk
#: Nonce of the stochastic-rounding keystream (its seed is separate from any mask seed anyway).
SR_NONCE = b"ai4hi-sr-nonce\x00\x00"
_U = 2.0**-24
_ERR_REL = 2.0**-21
_MIN_EXP, _MAX_EXP = -100, 100


class OverflowRiskError(ValueError):
    """A quantisation configuration would let the aggregated sum wrap around the modulus."""


def max_abs_level(clip_f32: float, scale: float) -> int:
    """Largest ``|q|`` one site can produce: ``floor(c * s) + 1``."""
    return math.floor(clip_f32 * scale) + 1


def check_no_overflow(clip: float, n_sites: int, scale: float, bits: int = 32) -> None:
    """Refuse (with :class:`OverflowRiskError`) if ``n_sites`` quantised vectors, each clipped to
    ``clip`` and scaled by ``scale``, could sum outside the centred ``bits``-bit range."""
    _check_bits_sites(n_sites, bits)
    if not (math.isfinite(clip) and clip > 0):
        raise OverflowRiskError(f"clip must be a positive finite number, got {clip!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise OverflowRiskError(f"scale must be a positive finite number, got {scale!r}")
    limit = (1 << (bits - 1)) - 1
    per_site = max_abs_level(clip, scale)
    worst = n_sites * per_site
    if worst > limit:
        raise OverflowRiskError(
            f"secure-aggregation overflow risk: {n_sites} sites x max |level| {per_site} "
            f"(clip {clip:g} x scale {scale:g}, +1 for stochastic rounding) = {worst} exceeds the "
            f"{bits}-bit signed range ({limit}); the sum could wrap mod 2**32 and come out wrong. "
            f"Lower the clip or the scale, or aggregate fewer sites."
        )


def _check_bits_sites(n_sites: int, bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
        raise OverflowRiskError(f"bits must be an integer in [2, 32] (the modulus is 2**32), got {bits!r}")
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise OverflowRiskError(f"n_sites must be a positive integer, got {n_sites!r}")


def _float32_at_most(value: float) -> float:
    v = np.float32(value)
    if float(v) > value:
        v = np.nextafter(v, np.float32(0))
    return float(v)


@dataclass(frozen=True)
class QuantizationConfig:
    """Fixed-point parameters shared by all sites and the server of one job.

    Args:
        clip: every element is clipped to ``[-clip, clip]`` before quantisation.
        n_sites: the most vectors that will ever be summed (the consortium size).
        bits: the sum must fit in a signed ``bits``-bit integer (<= 32; smaller leaves headroom).
        scale_exponent: force ``scale = 2**scale_exponent`` (checked); default: the largest
            power of two that cannot overflow.

    Raises :class:`OverflowRiskError` for configurations whose sum could wrap, and for a scale so
    coarse that the clip range has fewer than two levels.
    """

    clip: float
    n_sites: int
    bits: int = 32
    scale_exponent: int | None = field(default=None)

    def __post_init__(self) -> None:
        _check_bits_sites(self.n_sites, self.bits)
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)) or not math.isfinite(self.clip):
            raise OverflowRiskError(f"clip must be a positive finite number, got {self.clip!r}")
        if not self.clip > 0 or self.clip_f32 <= 0 or self.clip_f32 > 2.0**100:
            raise OverflowRiskError(f"clip must be positive, representable in float32 and <= 2**100, got {self.clip!r}")
        e = self.scale_exponent
        if e is not None:
            if isinstance(e, bool) or not isinstance(e, int) or not _MIN_EXP <= e <= _MAX_EXP:
                raise OverflowRiskError(f"scale_exponent must be an integer in [{_MIN_EXP}, {_MAX_EXP}], got {e!r}")
        e = self.exponent
        check_no_overflow(self.clip_f32, self.n_sites, 2.0**e, self.bits)
        if self.clip_f32 * 2.0**e < 1:
            raise OverflowRiskError(
                f"quantisation too coarse: clip {self.clip:g} x scale 2**{e} < 1 level; "
                f"raise the scale or the bits, or aggregate fewer sites"
            )

    @cached_property
    def clip_f32(self) -> float:
        """The clip actually applied: the largest float32 not above ``clip``."""
        return _float32_at_most(float(self.clip))

    @cached_property
    def exponent(self) -> int:
        """``log2(scale)``."""
        if self.scale_exponent is not None:
            return self.scale_exponent
        limit = (1 << (self.bits - 1)) - 1
        per_site_budget = limit // self.n_sites  # need floor(c * 2**e) + 1 <= this
        if per_site_budget < 2:
            raise OverflowRiskError(
                f"{self.n_sites} sites cannot be summed in a signed {self.bits}-bit range with any scale"
            )
        e = math.floor(math.log2((per_site_budget - 1) / self.clip_f32))
        e = max(_MIN_EXP, min(_MAX_EXP, e))
        while e > _MIN_EXP and max_abs_level(self.clip_f32, 2.0**e) > per_site_budget:
            e -= 1
        while e < _MAX_EXP and max_abs_level(self.clip_f32, 2.0 ** (e + 1)) <= per_site_budget:
            e += 1
        return e

    @property
    def scale(self) -> float:
        """Quantisation levels per unit: ``2**exponent``."""
        return 2.0**self.exponent

    @property
    def resolution(self) -> float:
        """``1 / scale``: the spacing of quantisation levels."""
        return 2.0**-self.exponent

    @property
    def max_level(self) -> int:
        """Largest ``|q|`` one site can produce."""
        return max_abs_level(self.clip_f32, self.scale)


def error_bound(cfg: QuantizationConfig) -> float:
    """Per-element bound on ``|dequantize_mean - mean of the clipped inputs|`` (module docstring):
    ``1/scale + 2**-21 * (clip + 1/scale)``. Clipping error is extra (:func:`clipping_error`)."""
    r = cfg.resolution
    return r + _ERR_REL * (cfg.clip_f32 + r)


def weighted_error_bound(cfg: QuantizationConfig, n_summed: int, total_weight: float, max_weight: float) -> float:
    """Per-element bound for :func:`dequantize_weighted_mean`: ``n * w_max / W * error_bound``."""
    if not (total_weight > 0 and max_weight > 0):
        raise ValueError("weights must be positive")
    return n_summed * max_weight / total_weight * error_bound(cfg)


def clipping_error(values: Sequence[np.ndarray], cfg: QuantizationConfig) -> np.ndarray:
    """Elementwise ``(1/n) sum_k max(|x_k| - c, 0)`` (float64): the most clipping can move the mean."""
    if not values:
        raise ValueError("no vectors given")
    c = cfg.clip_f32
    acc = np.zeros(np.asarray(values[0]).size, dtype=np.float64)
    for v in values:
        acc += np.maximum(np.abs(np.asarray(v, dtype=np.float64).ravel()) - c, 0.0)
    return acc / len(values)


def weight_multiplier(weight: float, max_weight: float) -> float:
    """``weight / max_weight``, checked to lie in ``(0, 1]`` (the ``multiplier`` of :func:`quantize`)."""
    if not (math.isfinite(weight) and math.isfinite(max_weight) and max_weight > 0):
        raise ValueError("weight and max_weight must be finite, max_weight positive")
    if not 0 < weight <= max_weight:
        raise ValueError(f"weight {weight!r} must lie in (0, max_weight={max_weight!r}]")
    return weight / max_weight


def _flat_f32(x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"quantize expects a numpy float32 array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"quantize expects float32 (use .astype(np.float32)), got {x.dtype}")
    return np.ascontiguousarray(x).reshape(-1)


def _out_u32(out: np.ndarray | None, size: int) -> np.ndarray:
    if out is None:
        return np.empty(size, dtype=np.uint32)
    if not isinstance(out, np.ndarray) or out.dtype != np.uint32 or out.ndim != 1:
        raise TypeError("out must be a 1-D numpy uint32 array")
    if out.size != size or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be writeable, C-contiguous and of size {size}, got size {out.size}")
    return out


def quantize(
    x: np.ndarray,
    cfg: QuantizationConfig,
    seed: bytes | None = None,
    *,
    multiplier: float = 1.0,
    out: np.ndarray | None = None,
    cipher: str = DEFAULT_CIPHER,
    rounding_bits: int = 16,
) -> np.ndarray:
    """Clip, (weight,) scale and stochastically round ``x`` (float32, any shape) into uint32.

    Args:
        x: float32 values; any non-finite value is refused (fail closed) with ``ValueError``.
        cfg: the job's :class:`QuantizationConfig`.
        seed: 32-byte seed of the rounding randomness; ``None`` (production) draws a fresh one.
        multiplier: weight folded in after clipping, ``|multiplier| <= 1`` (see
            :func:`weight_multiplier`).
        out: optional preallocated 1-D uint32 array of ``x.size`` elements (e.g. a segment of a
            :class:`VectorLayout` vector); written in place and returned.
        cipher: keystream cipher of the rounding randomness.
        rounding_bits: 16 (default) or 8 random bits per element; the rounding bias is below
            ``2**-rounding_bits`` of one level. 8 bits halve the keystream (~10% faster overall).

    Returns the flat uint32 vector of two's-complement levels.
    """
    flat = _flat_f32(x)
    n_total = flat.size
    out = _out_u32(out, n_total)
    if not (math.isfinite(multiplier) and abs(multiplier) <= 1.0):
        raise ValueError(f"multiplier must be finite with |multiplier| <= 1, got {multiplier!r}")
    if seed is None:
        seed = secrets.token_bytes(32)
    stream = Keystream(seed, nonce=SR_NONCE, cipher=cipher)
    if rounding_bits not in (8, 16):
        raise ValueError(f"rounding_bits must be 8 or 16, got {rounding_bits!r}")
    chunk = min(QUANT_CHUNK, max(n_total, 1))
    fbuf = np.empty(chunk, dtype=np.float32)
    ufbuf = np.empty(chunk, dtype=np.float32)
    per_word = 32 // rounding_bits
    rbuf = np.empty(-(-chunk // per_word) * per_word, dtype=np.uint8 if rounding_bits == 8 else np.uint16)
    rwords = rbuf.view(np.uint32)
    rview = rwords.data.cast("B")
    with np.errstate(over="ignore"):  # x * s * 2**b may overflow to inf: clipped below
        _quantize_loop(flat, out.view(np.int32), chunk, fbuf, ufbuf, rbuf, rwords, rview, stream, cfg, multiplier,
                       rounding_bits)
    return out


# the ufunc behind np.clip, without np.clip's Python wrapper
_CLIP = getattr(getattr(getattr(np, "_core", None), "umath", None), "clip", None) or np.clip


def _quantize_loop(flat, out_i32, chunk, fbuf, ufbuf, rbuf, rwords, rview, stream, cfg, multiplier, bits):
    """Per chunk, all in cache: ``X = x * s * 2**b`` (the only pass that reads ``x`` from memory),
    max/min of ``X`` (catch NaN/inf, decide whether to clip), clip ``X`` to ``+-c s 2**b`` if needed,
    ``* a`` if weights are folded, keystream, ``+ k`` (uint -> float32), ``* 2**-b``, floor, convert
    to int32 into ``out``. Working on the scaled values is exact: ``s 2**b`` is a power of two, so
    ``clip(x) * s 2**b == clip(x * s 2**b)`` -- except that a huge finite ``|x|`` overflows to inf,
    which the clip turns into the same ``+-c s 2**b`` (a genuine NaN/inf is told apart by looking at
    ``x`` itself, only in chunks whose scaled extremes are out of range)."""
    n_total = flat.size
    mul, add, floor, copyto = np.multiply, np.add, np.floor, np.copyto
    vmax, vmin, clip = np.maximum.reduce, np.minimum.reduce, _CLIP
    isfinite = math.isfinite
    scale_b = float(cfg.scale) * 2.0**bits  # a power of two in [2**-92, 2**116]
    s_b = np.float32(scale_b)
    # c * s * 2**b: c is a float32 and c * s <= 2**31, so this is exact in float32 (<= 2**47)
    hi = np.float32(cfg.clip_f32 * scale_b)
    lo = -hi
    assert float(hi) == cfg.clip_f32 * scale_b
    a = np.float32(multiplier)
    fold = multiplier != 1.0
    inv = np.float32(2.0**-bits)
    for off in range(0, n_total, chunk):
        n = min(chunk, n_total - off)
        xc = flat[off : off + n]
        if n == chunk:
            f, uf, r = fbuf, ufbuf, rbuf[:chunk]
        else:
            f, uf, r = fbuf[:n], ufbuf[:n], rbuf[:n]
        mul(xc, s_b, out=f)  # X = x * s * 2**b, exact (power of two) or +-inf for |x| > ~2**80
        top, bottom = vmax(f), vmin(f)  # in cache; NaN propagates, so "not <=" catches it
        if not (top <= hi and bottom >= lo):
            # NaN/inf in X: a NaN/inf input (refused) or a huge finite one that overflowed (clipped)
            if not (isfinite(top) and isfinite(bottom) or isfinite(vmax(xc)) and isfinite(vmin(xc))):
                i = off + int(np.flatnonzero(~np.isfinite(xc))[0])
                raise ValueError(f"refusing to quantise a non-finite value ({flat[i]!r} at index {i})")
            clip(f, lo, hi, out=f)  # == clip(x, -c, c) * s * 2**b, overflowed values included
        if fold:
            mul(f, a, out=f)  # fl(X a) = fl(clip(x) a) s 2**b: the one rounding of the weight folding
        # floor(y + k 2**-b) computed as floor(fl(y 2**b + k) 2**-b): the power-of-two scalings are
        # exact and commute with rounding, and uint8/16 -> float32 are numpy's fastest conversions
        stream._raw_fill_uint32(rwords, rview)  # keystream for the whole chunk (2 or 4 uniforms per word)
        copyto(uf, r, casting="unsafe")  # exact: k uniform in [0, 2**b)
        add(f, uf, out=f)
        mul(f, inv, out=f)  # exact
        floor(f, out=f)
        copyto(out_i32[off : off + n], f, casting="unsafe")  # integral and within int32 range


def _check_n_summed(cfg: QuantizationConfig, n_summed: int) -> None:
    if isinstance(n_summed, bool) or not isinstance(n_summed, int) or n_summed < 1:
        raise ValueError(f"n_summed must be a positive integer, got {n_summed!r}")
    if n_summed > cfg.n_sites:
        raise OverflowRiskError(
            f"{n_summed} vectors summed but the quantisation config only guarantees no wrap-around for "
            f"{cfg.n_sites}"
        )


def _check_sum(sum_u32: np.ndarray) -> np.ndarray:
    if not isinstance(sum_u32, np.ndarray) or sum_u32.dtype != np.uint32 or sum_u32.ndim != 1:
        raise TypeError("the aggregated sum must be a 1-D numpy uint32 array")
    return np.ascontiguousarray(sum_u32)


def dequantize_sum(
    sum_u32: np.ndarray,
    cfg: QuantizationConfig,
    n_summed: int,
    *,
    factor: float = 1.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``factor * (centred int32 value of sum_u32) / scale`` as float32.

    ``sum_u32`` is the unmasked sum mod 2**32 of ``n_summed`` quantised vectors. With the default
    ``factor=1`` this estimates ``sum_k multiplier_k * clip(x_k)``; see :func:`dequantize_mean` and
    :func:`dequantize_weighted_mean`. Computed in float32 (``fl(fl(Q) * fl(factor / s))``).
    """
    _check_n_summed(cfg, n_summed)
    src = _check_sum(sum_u32).view(np.int32)
    if out is None:
        out = np.empty(src.size, dtype=np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == src.shape):
        raise TypeError(f"out must be a float32 array of shape {src.shape}")
    if not math.isfinite(factor):
        raise ValueError("factor must be finite")
    m = np.float32(factor * cfg.resolution)
    # float32 arithmetic: fl(fl(Q) * fl(factor / s)) -- at most 3 roundings, covered by error_bound
    np.multiply(src, m, out=out, dtype=np.float32, casting="unsafe")
    return out


def dequantize_mean(sum_u32: np.ndarray, cfg: QuantizationConfig, n_summed: int, *, out: np.ndarray | None = None):
    """Elementwise mean of the ``n_summed`` clipped inputs (error: :func:`error_bound`)."""
    _check_n_summed(cfg, n_summed)
    return dequantize_sum(sum_u32, cfg, n_summed, factor=1.0 / n_summed, out=out)


def dequantize_weighted_mean(
    sum_u32: np.ndarray,
    cfg: QuantizationConfig,
    n_summed: int,
    *,
    total_weight: float,
    max_weight: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``sum_k w_k clip(x_k) / sum_k w_k`` from vectors quantised with
    ``multiplier = w_k / max_weight`` (error: :func:`weighted_error_bound`)."""
    if not (total_weight > 0 and max_weight > 0 and math.isfinite(total_weight) and math.isfinite(max_weight)):
        raise ValueError("total_weight and max_weight must be positive and finite")
    return dequantize_sum(sum_u32, cfg, n_summed, factor=max_weight / total_weight, out=out)


# ----------------------------------------------------------------------------- exact integers


def check_counts_no_overflow(n_sites: int, max_value: int) -> None:
    """Refuse if ``n_sites`` non-negative integers, each ``<= max_value``, could sum past 2**32 - 1."""
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise OverflowRiskError(f"n_sites must be a positive integer, got {n_sites!r}")
    if isinstance(max_value, bool) or not isinstance(max_value, int) or max_value < 0:
        raise OverflowRiskError(f"max_value must be a non-negative integer, got {max_value!r}")
    if n_sites * max_value > 0xFFFFFFFF:
        raise OverflowRiskError(
            f"secure-aggregation overflow risk: {n_sites} sites x max count {max_value} = "
            f"{n_sites * max_value} exceeds 2**32 - 1"
        )


def encode_counts(
    values: Sequence[int] | np.ndarray, *, n_sites: int, max_value: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Exact non-negative integers (sample weights, metric counts) as uint32 coordinates.

    Refuses values outside ``[0, max_value]`` and configurations whose sum could wrap.
    """
    check_counts_no_overflow(n_sites, max_value)
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "b"):
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.floor(arr)):
            pass
        else:
            raise TypeError(f"counts must be integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() > max_value):
        raise ValueError(f"counts must lie in [0, {max_value}], got range [{arr.min()}, {arr.max()}]")
    out = _out_u32(out, arr.size)
    out[...] = arr.astype(np.uint64).astype(np.uint32)
    return out


def decode_count_sums(sum_u32: np.ndarray) -> np.ndarray:
    """The exact integer sums (int64) of :func:`encode_counts` coordinates."""
    return _check_sum(sum_u32).astype(np.int64)


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class VectorLayout:
    """Named, contiguous segments of the single uint32 vector a site masks and uploads.

    Example::

        layout = VectorLayout((("delta", n_params), ("weight", 1), ("metric_sums", 2), ("metric_counts", 2)))
        vec = layout.allocate()
        quantize(delta, cfg, multiplier=w / w_max, out=layout.view(vec, "delta"))
        encode_counts([w], n_sites=n, max_value=w_max, out=layout.view(vec, "weight"))
    """

    segments: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        segs = tuple((str(name), int(length)) for name, length in self.segments)
        names = [s[0] for s in segs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate segment names in {names}")
        for name, length in segs:
            if not name or length < 0:
                raise ValueError(f"bad segment {(name, length)!r}")
        object.__setattr__(self, "segments", segs)

    @property
    def total(self) -> int:
        return sum(length for _, length in self.segments)

    @cached_property
    def slices(self) -> dict[str, slice]:
        out, off = {}, 0
        for name, length in self.segments:
            out[name] = slice(off, off + length)
            off += length
        return out

    def allocate(self) -> np.ndarray:
        return np.zeros(self.total, dtype=np.uint32)

    def view(self, vector: np.ndarray, name: str) -> np.ndarray:
        """The segment ``name`` of ``vector`` (a view: writing to it writes the vector)."""
        if vector.shape != (self.total,):
            raise ValueError(f"vector has shape {vector.shape}, layout needs ({self.total},)")
        return vector[self.slices[name]]

    def split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """All segments of ``vector`` by name (views)."""
        return {name: self.view(vector, name) for name, _ in self.segments}

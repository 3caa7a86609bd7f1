"""Quantisation into Z_2^32: error bound (hypothesis), overflow guard, stochastic rounding, folding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


from ai4hi_sdk.privacy.secagg.primitives.quantize import (
    QUANT_CHUNK,
    OverflowRiskError,
    QuantizationConfig,
    VectorLayout,
    check_no_overflow,
    clipping_error,
    decode_count_sums,
    dequantize_mean,
    dequantize_sum,
    dequantize_weighted_mean,
    encode_counts,
    error_bound,
    quantize,
    weight_multiplier,
    weighted_error_bound,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sum(vectors):
    acc = np.zeros(vectors[0].size, dtype=np.uint32)
    for v in vectors:
        np.add(acc, v, out=acc)
    return acc


def _clipped_mean64(xs, cfg):
    return np.mean([np.clip(x.astype(np.float64), -cfg.clip_f32, cfg.clip_f32) for x in xs], axis=0)


@st.composite
def scenario(draw):
    clip = draw(st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False))
    n_sites = draw(st.integers(1, 64))
    bits = draw(st.sampled_from([32, 32, 24, 16]))
    n_summed = draw(st.integers(1, min(n_sites, 5)))
    dim = draw(st.integers(1, 200))
    # values up to 3x the clip (so clipping happens), negatives included, subnormals and zeros too
    bound = float(np.float32(3 * clip))
    elems = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=32)
    xs = [draw(hnp.arrays(np.float32, dim, elements=elems)) for _ in range(n_summed)]
    seeds = [draw(st.binary(min_size=32, max_size=32)) for _ in range(n_summed)]
    return QuantizationConfig(clip=clip, n_sites=n_sites, bits=bits), xs, seeds


@SETTINGS
@given(scenario())
def test_sum_of_sites_dequantises_within_error_bound(sc):
    cfg, xs, seeds = sc
    total = _sum([quantize(x, cfg, seed) for x, seed in zip(xs, seeds)])
    mean = dequantize_mean(total, cfg, len(xs))
    assert mean.dtype == np.float32
    err = np.abs(mean.astype(np.float64) - _clipped_mean64(xs, cfg))
    assert np.all(err <= error_bound(cfg)), (float(err.max()), error_bound(cfg))
    # and against the unclipped mean: plus the clipping error
    raw = np.mean([x.astype(np.float64) for x in xs], axis=0)
    assert np.all(np.abs(mean - raw) <= error_bound(cfg) + clipping_error(xs, cfg) + 1e-12 * cfg.clip)


@SETTINGS
@given(scenario())
def test_single_vector_round_trip(sc):
    cfg, xs, seeds = sc
    x = xs[0]
    q = quantize(x, cfg, seeds[0])
    assert q.dtype == np.uint32 and q.shape == (x.size,)
    levels = q.view(np.int32).astype(np.int64)
    y = np.clip(x.astype(np.float64), -cfg.clip_f32, cfg.clip_f32) * cfg.scale
    assert np.all(np.abs(levels - y) <= 1)  # stochastic rounding moves by less than one level
    assert np.all(np.abs(levels) <= cfg.max_level)
    back = dequantize_sum(q, cfg, 1)
    assert np.all(np.abs(back - np.clip(x.astype(np.float64), -cfg.clip_f32, cfg.clip_f32)) <= error_bound(cfg))


@settings(max_examples=40, deadline=None)
@given(
    clip=st.floats(1e-4, 1e4, allow_nan=False),
    n_sites=st.integers(1, 10_000),
    bits=st.integers(8, 32),
)
def test_auto_scale_is_the_largest_power_of_two_that_cannot_wrap(clip, n_sites, bits):
    limit = 2 ** (bits - 1) - 1
    try:
        cfg = QuantizationConfig(clip=clip, n_sites=n_sites, bits=bits)
    except OverflowRiskError:
        # only when not even one level per site fits
        assert n_sites * 2 > limit or clip * 2.0**100 < 1 or n_sites * (math.floor(clip) + 1) > limit
        return
    assert n_sites * cfg.max_level <= limit
    check_no_overflow(cfg.clip_f32, n_sites, cfg.scale, bits)
    with pytest.raises(OverflowRiskError):
        check_no_overflow(cfg.clip_f32, n_sites, cfg.scale * 2, bits)
    assert cfg.clip_f32 <= clip and np.float32(cfg.clip_f32) == cfg.clip_f32


def test_all_sites_at_the_clip_do_not_wrap():
    for n in (1, 2, 3, 7, 100):
        cfg = QuantizationConfig(clip=0.5, n_sites=n)
        for value in (0.5, -0.5, 10.0, -10.0):
            x = np.full(1000, value, dtype=np.float32)
            total = _sum([quantize(x, cfg, bytes([i]) * 32) for i in range(n)])
            mean = dequantize_mean(total, cfg, n)
            assert np.all(np.abs(mean - np.sign(value) * 0.5) <= error_bound(cfg))


def test_overflow_guard_refuses_wrapping_configurations():
    with pytest.raises(OverflowRiskError, match="overflow risk"):
        QuantizationConfig(clip=1.0, n_sites=3, scale_exponent=30)
    cfg = QuantizationConfig(clip=1.0, n_sites=3, scale_exponent=29)
    assert cfg.scale == 2.0**29
    with pytest.raises(OverflowRiskError, match="overflow risk"):
        check_no_overflow(1.0, 5, 2.0**29)
    with pytest.raises(OverflowRiskError, match="only guarantees"):
        dequantize_mean(np.zeros(3, dtype=np.uint32), cfg, 4)
    with pytest.raises(OverflowRiskError, match="too coarse"):
        QuantizationConfig(clip=1.0, n_sites=3, scale_exponent=-1)
    with pytest.raises(OverflowRiskError, match="cannot be summed"):
        QuantizationConfig(clip=1.0, n_sites=100, bits=8)
    for bad in (dict(clip=0.0), dict(clip=-1.0), dict(clip=float("nan")), dict(clip=float("inf")), dict(n_sites=0),
                dict(bits=33), dict(bits=1)):
        args = dict(clip=1.0, n_sites=3)
        args.update(bad)
        with pytest.raises(OverflowRiskError):
            QuantizationConfig(**args)


def test_the_wrap_the_guard_prevents_is_real():
    # with a scale one power of two too large, 3 sites at the clip wrap and the result is garbage
    good = QuantizationConfig(clip=1.0, n_sites=3)
    levels = np.full(4, good.max_level * 2, dtype=np.int64)  # what scale * 2 would produce
    total = (levels * 3) % 2**32
    centred = total.astype(np.uint32).view(np.int32)
    assert np.all(centred < 0)  # wrapped into the negative half


def test_error_bound_formula():
    cfg = QuantizationConfig(clip=2.0, n_sites=3)
    assert error_bound(cfg) == cfg.resolution + 2.0**-21 * (2.0 + cfg.resolution)
    assert weighted_error_bound(cfg, 3, total_weight=30.0, max_weight=10.0) == pytest.approx(error_bound(cfg))
    assert weighted_error_bound(cfg, 3, total_weight=15.0, max_weight=10.0) == pytest.approx(2 * error_bound(cfg))


def test_stochastic_rounding_is_unbiased():
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    frac = 0.3
    n = 200_000
    x = np.full(n, (12345 + frac) / cfg.scale, dtype=np.float32)
    y = float(x[0]) * cfg.scale
    levels = quantize(x, cfg, b"\x07" * 32).view(np.int32)
    assert set(np.unique(levels)) == {12345, 12346}
    # mean within 6 standard errors of the exact value
    assert abs(levels.mean() - y) < 6 * math.sqrt(frac * (1 - frac) / n)


def test_seeded_quantisation_is_deterministic_and_fresh_seed_is_random():
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    x = np.random.default_rng(0).normal(0, 0.1, 10_000).astype(np.float32)
    assert np.array_equal(quantize(x, cfg, bytes(32)), quantize(x, cfg, bytes(32)))
    assert not np.array_equal(quantize(x, cfg), quantize(x, cfg))


def test_non_finite_and_wrong_dtype_are_refused():
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(QUANT_CHUNK + 10, dtype=np.float32)
        x[QUANT_CHUNK + 3] = bad
        with pytest.raises(ValueError, match="non-finite"):
            quantize(x, cfg)
    with pytest.raises(TypeError, match="float32"):
        quantize(np.zeros(4), cfg)
    with pytest.raises(TypeError, match="float32"):
        quantize([0.0, 1.0], cfg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiplier"):
        quantize(np.zeros(4, dtype=np.float32), cfg, multiplier=1.5)
    with pytest.raises(ValueError, match="size 4"):
        quantize(np.zeros(4, dtype=np.float32), cfg, out=np.zeros(5, dtype=np.uint32))


def test_huge_finite_values_are_clipped_not_refused():
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    x = np.array([3e38, -3e38, 1e30, 0.5], dtype=np.float32)
    assert np.allclose(dequantize_sum(quantize(x, cfg, bytes(32)), cfg, 1), [1, -1, 1, 0.5], atol=error_bound(cfg))


def test_multidimensional_input_and_chunk_boundaries():
    cfg = QuantizationConfig(clip=1.0, n_sites=2)
    x = np.random.default_rng(1).normal(0, 0.5, (3, QUANT_CHUNK + 5)).astype(np.float32)
    q = quantize(x, cfg, bytes(32))
    assert q.shape == (x.size,)
    assert np.all(np.abs(dequantize_sum(q, cfg, 1) - np.clip(x, -1, 1).ravel()) <= error_bound(cfg))


def test_weighted_mean_with_folded_weights_and_exact_counts():
    rng = np.random.default_rng(3)
    n_sites, dim, w_max = 4, 3000, 1000
    cfg = QuantizationConfig(clip=1.0, n_sites=n_sites)
    layout = VectorLayout((("delta", dim), ("weight", 1)))
    xs = [rng.normal(0, 0.3, dim).astype(np.float32) for _ in range(n_sites)]
    weights = [10, 250, 1000, 37]
    vecs = []
    for x, w in zip(xs, weights):
        v = layout.allocate()
        quantize(x, cfg, multiplier=weight_multiplier(w, w_max), out=layout.view(v, "delta"))
        encode_counts([w], n_sites=n_sites, max_value=w_max, out=layout.view(v, "weight"))
        vecs.append(v)
    total = layout.split(_sum(vecs))
    total_weight = int(decode_count_sums(total["weight"])[0])
    assert total_weight == sum(weights)
    mean = dequantize_weighted_mean(total["delta"], cfg, n_sites, total_weight=total_weight, max_weight=w_max)
    ref = sum(w * np.clip(x.astype(np.float64), -1, 1) for x, w in zip(xs, weights)) / sum(weights)
    assert np.all(np.abs(mean - ref) <= weighted_error_bound(cfg, n_sites, total_weight, w_max))


def test_counts_guard_and_errors():
    with pytest.raises(OverflowRiskError, match="2\\*\\*32"):
        encode_counts([1], n_sites=5, max_value=2**30)
    with pytest.raises(ValueError, match="lie in"):
        encode_counts([11], n_sites=2, max_value=10)
    with pytest.raises(ValueError, match="lie in"):
        encode_counts([-1], n_sites=2, max_value=10)
    with pytest.raises(TypeError, match="integers"):
        encode_counts([1.5], n_sites=2, max_value=10)
    assert list(encode_counts(np.array([3.0, 4.0]), n_sites=2, max_value=10)) == [3, 4]
    with pytest.raises(ValueError):
        weight_multiplier(0, 10)
    with pytest.raises(ValueError):
        weight_multiplier(11, 10)


def test_vector_layout():
    layout = VectorLayout((("a", 3), ("b", 0), ("c", 2)))
    assert layout.total == 5
    v = layout.allocate()
    layout.view(v, "c")[:] = 7
    assert list(v) == [0, 0, 0, 7, 7]
    assert {k: s.size for k, s in layout.split(v).items()} == {"a": 3, "b": 0, "c": 2}
    with pytest.raises(ValueError, match="duplicate"):
        VectorLayout((("a", 1), ("a", 2)))
    with pytest.raises(ValueError, match="layout needs"):
        layout.view(np.zeros(4, dtype=np.uint32), "a")


def test_dequantize_input_errors():
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    with pytest.raises(TypeError, match="uint32"):
        dequantize_mean(np.zeros(3, dtype=np.int32), cfg, 1)
    with pytest.raises(ValueError, match="positive integer"):
        dequantize_mean(np.zeros(3, dtype=np.uint32), cfg, 0)


@pytest.mark.parametrize("bits", [8, 16])
def test_rounding_bits_unbiased_and_within_bound(bits):
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    n = 100_000
    x = np.full(n, (777 + 0.6) / cfg.scale, dtype=np.float32)
    levels = quantize(x, cfg, b"\x09" * 32, rounding_bits=bits).view(np.int32)
    assert set(np.unique(levels)) == {777, 778}
    y = float(x[0]) * cfg.scale
    assert abs(levels.mean() - y) < 6 * math.sqrt(0.24 / n) + 2.0**-bits
    z = np.random.default_rng(5).normal(0, 0.5, 5000).astype(np.float32)
    back = dequantize_sum(quantize(z, cfg, rounding_bits=bits), cfg, 1)
    assert np.all(np.abs(back - np.clip(z.astype(np.float64), -1, 1)) <= error_bound(cfg))
    with pytest.raises(ValueError, match="rounding_bits"):
        quantize(z, cfg, rounding_bits=12)


def test_clip_path_and_no_clip_path_agree_on_in_range_values():
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    x = np.random.default_rng(6).normal(0, 0.1, 3 * QUANT_CHUNK).astype(np.float32)
    with_outliers = x.copy()
    with_outliers[[5, QUANT_CHUNK + 7, 2 * QUANT_CHUNK + 9]] = [4.0, -9.0, 1e30]
    a = quantize(x, cfg, bytes(32))
    b = quantize(with_outliers, cfg, bytes(32))
    same = np.ones(x.size, dtype=bool)
    same[[5, QUANT_CHUNK + 7, 2 * QUANT_CHUNK + 9]] = False
    assert np.array_equal(a[same], b[same])
    assert list(b[~same].view(np.int32)) in (
        [l1, l2, l3] for l1 in (cfg.max_level - 1, cfg.max_level) for l2 in (-cfg.max_level, 1 - cfg.max_level)
        for l3 in (cfg.max_level - 1, cfg.max_level)
    )


# ------------------------------------------------------------------ reference and unbiasedness


def _reference_quantize(x, cfg, seed, multiplier=1.0, bits=16):
    """Unchunked float32 reference of the documented definition: ``floor(fl(y 2**b + k) 2**-b)`` with
    ``y = fl(clip(x) * a) * s`` and ``k`` the little-endian ``b``-bit words of the AES-128-CTR keystream
    of ``seed`` under ``SR_NONCE`` (computed with ``cryptography`` directly, not our keystream code)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from ai4hi_sdk.privacy.secagg.primitives.quantize import SR_NONCE

    n = x.size
    counter = bytes(p ^ q for p, q in zip(seed[16:], SR_NONCE))
    raw = Cipher(algorithms.AES(seed[:16]), modes.CTR(counter)).encryptor().update(bytes(n * bits // 8 + 4))
    k = np.frombuffer(raw, dtype="<u2" if bits == 16 else "u1")[:n].astype(np.float32)
    c = np.float32(cfg.clip_f32)
    y = np.clip(x.ravel(), -c, c)
    if multiplier != 1.0:
        y = y * np.float32(multiplier)
    f = y * np.float32(cfg.scale * 2.0**bits) + k
    return np.floor(f * np.float32(2.0**-bits)).astype(np.int32).view(np.uint32)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("multiplier", [1.0, 0.37, -0.8])
def test_quantize_matches_unchunked_reference(bits, multiplier):
    cfg = QuantizationConfig(clip=0.75, n_sites=5)
    rng = np.random.default_rng(11)
    x = rng.normal(0, 0.4, 2 * QUANT_CHUNK + 77).astype(np.float32)  # clips in every chunk
    x[:QUANT_CHUNK] = np.clip(x[:QUANT_CHUNK], -0.5, 0.5)  # first chunk: no clipping needed
    x[[3, QUANT_CHUNK + 4]] = [3e38, -1e30]  # overflow x * s * 2**b to inf: must clip, not refuse
    seed = bytes(range(32))
    got = quantize(x, cfg, seed, multiplier=multiplier, rounding_bits=bits)
    assert np.array_equal(got, _reference_quantize(x, cfg, seed, multiplier, bits))


def test_non_finite_next_to_overflowing_values_is_still_refused():
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(100, dtype=np.float32)
        x[[2, 50]] = [3e38, bad]
        with pytest.raises(ValueError, match="non-finite"):
            quantize(x, cfg, multiplier=0.5)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("frac", [0.001, 0.25, 0.5, 0.77, 0.999])
@pytest.mark.parametrize("sign", [1, -1])
def test_stochastic_rounding_unbiased_for_many_fractions(bits, frac, sign):
    """E[q] = y within 6 standard errors plus the documented bias bound 2**-bits of one level."""
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    n = 60_000
    x = np.full(n, sign * (4321 + frac) / cfg.scale, dtype=np.float32)
    y = float(x[0]) * cfg.scale
    levels = quantize(x, cfg, bytes([bits, int(frac * 255), sign & 0xFF]) * 10 + b"ab", rounding_bits=bits)
    levels = levels.view(np.int32).astype(np.float64)
    assert set(np.unique(levels)) <= {math.floor(y), math.floor(y) + 1}
    p = y - math.floor(y)
    assert abs(levels.mean() - y) <= 6 * math.sqrt(max(p * (1 - p), 1e-6) / n) + 2.0**-bits


@SETTINGS
@given(
    clip=st.floats(1e-2, 1e2),
    n_sites=st.integers(1, 40),
    u=st.floats(-1.0, 1.0),
    multiplier=st.sampled_from([1.0, 0.5, 0.3]),
    bits=st.sampled_from([8, 16]),
    seed=st.binary(min_size=32, max_size=32),
)
def test_dequantised_mean_is_unbiased_within_clip_range(clip, n_sites, u, multiplier, bits, seed):
    """Property: for x in [-clip, clip], the average of dequant(quant(x)) over many independent
    roundings is x * multiplier to within 6 standard errors (a rounding has variance <= 1/4 level^2)
    plus the bias bound (2**-bits of a level) and float32 precision of x * multiplier (the multiplier
    is rounded to float32, then the product: 2**-22 relative, within the documented error bound)."""
    cfg = QuantizationConfig(clip=clip, n_sites=n_sites)
    x32 = np.float32(u * cfg.clip_f32)
    n = 20_000
    q = quantize(np.full(n, x32, dtype=np.float32), cfg, seed, multiplier=multiplier, rounding_bits=bits)
    est = q.view(np.int32).astype(np.float64).mean() / cfg.scale
    target = float(x32) * multiplier
    tol = (6 * 0.5 / math.sqrt(n) + 2.0**-bits) * cfg.resolution + 2.0**-22 * abs(target)
    assert abs(est - target) <= tol

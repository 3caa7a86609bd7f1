"""Mask cancellation, server-side unmasking, dropout recovery and uniformity of masked vectors.

The end-to-end tests run the primitives the way the protocol will: X25519 keys, HKDF seeds bound to
job/round/pair, quantisation, pairwise + self masks, Shamir shares of each site's private key and
self secret, and a server that only ever sees masked vectors and reconstructed secrets.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import pytest

from ai4hi_sdk.privacy.secagg.primitives import (
    QuantizationConfig,
    add_mask,
    apply_masks,
    apply_pairwise_masks,
    combine,
    decode_share,
    dequantize_mean,
    derive_pair_seed,
    derive_self_seed,
    encode_share,
    error_bound,
    fill_uint32,
    generate_keypair,
    pair_sign,
    public_key_of,
    quantize,
    remove_dropped_pair_masks,
    remove_self_masks,
    shared_secret,
    split,
    unmask_aggregate,
)
from ai4hi_sdk.privacy.secagg.primitives import masking
from ai4hi_sdk.privacy.secagg.primitives.masking import new_scratch


@pytest.fixture(autouse=True, params=["auto", "numpy"])
def masking_path(request):
    """Every test runs on the default path (the compiled fused masking where built) and on the pure one."""
    previous = masking.set_masking_impl(request.param)
    yield request.param
    masking.set_masking_impl(previous)

JOB = "job-secagg-test"


def _sum(vectors):
    acc = np.zeros_like(vectors[0])
    for v in vectors:
        np.add(acc, v, out=acc)  # wraps mod 2**32
    return acc


def test_pair_sign_convention():
    assert pair_sign("a", "b") == 1 and pair_sign("b", "a") == -1
    with pytest.raises(ValueError):
        pair_sign("a", "a")


def test_add_then_subtract_restores_and_wraps():
    seed = os.urandom(32)
    x = np.array([0, 1, 0xFFFFFFFF, 12345], dtype=np.uint32)
    y = x.copy()
    add_mask(y, seed, +1)
    mask = np.empty(4, dtype=np.uint32)
    fill_uint32(seed, mask)
    assert np.array_equal(y, x + mask)  # numpy uint32 addition wraps mod 2**32
    add_mask(y, seed, -1)
    assert np.array_equal(y, x)
    with pytest.raises(ValueError, match="sign"):
        add_mask(y, seed, 2)


@pytest.mark.parametrize("n", [1, 7, 20_003])
@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_chunking_does_not_change_the_result(n, chunk):
    seeds = [(os.urandom(32), 1), (os.urandom(32), -1), (os.urandom(32), 1)]
    base = np.arange(n, dtype=np.uint32)
    ref = base.copy()
    for seed, sign in seeds:
        m = np.empty(n, dtype=np.uint32)
        fill_uint32(seed, m)
        ref = ref + m if sign > 0 else ref - m
    out = apply_masks(base.copy(), seeds, scratch=new_scratch(chunk))
    assert np.array_equal(out, ref)


def test_vector_errors():
    with pytest.raises(TypeError, match="uint32"):
        add_mask(np.zeros(4, dtype=np.int64), os.urandom(32))
    with pytest.raises(ValueError, match="C-contiguous"):
        add_mask(np.zeros(8, dtype=np.uint32)[::2], os.urandom(32))
    with pytest.raises(ValueError, match="scratch"):
        add_mask(np.zeros(8, dtype=np.uint32), os.urandom(32), scratch=np.zeros(4, dtype=np.int32))


# ----------------------------------------------------------------------------- simulated protocol


@dataclass
class Site:
    name: str
    keypair: object
    self_secret: bytes
    x: np.ndarray


def _sites(n: int, dim: int, rng: np.random.Generator) -> list[Site]:
    return [
        Site(f"hospital-{i}", generate_keypair(), os.urandom(32), rng.normal(0, 0.3, dim).astype(np.float32))
        for i in range(1, n + 1)
    ]


def _pair_seeds(me: Site, others: list[Site], round_index: int) -> dict[str, bytes]:
    return {
        o.name: derive_pair_seed(
            shared_secret(me.keypair.private, o.keypair.public),
            job_id=JOB,
            round_index=round_index,
            site_a=me.name,
            site_b=o.name,
        )
        for o in others
        if o.name != me.name
    }


def _site_upload(site: Site, sites: list[Site], cfg: QuantizationConfig, round_index: int) -> np.ndarray:
    q = quantize(site.x, cfg, seed=None)
    plain = q.copy()
    apply_pairwise_masks(
        q, site.name, _pair_seeds(site, sites, round_index), derive_self_seed(site.self_secret, JOB, round_index)
    )
    site.quantized = plain  # kept only for the test's assertions
    return q


@pytest.mark.parametrize("n_sites", [3, 4, 5])
def test_masks_cancel_and_server_unmasks_exactly(n_sites):
    rng = np.random.default_rng(n_sites)
    sites = _sites(n_sites, 10_001, rng)
    cfg = QuantizationConfig(clip=1.0, n_sites=n_sites)
    uploads = [_site_upload(s, sites, cfg, round_index=2) for s in sites]
    plain_sum = _sum([s.quantized for s in sites])
    masked_sum = _sum(uploads)

    # sum of masked == sum of plain + sum of self masks (pair masks cancel)
    self_masks = []
    for s in sites:
        m = np.empty_like(plain_sum)
        fill_uint32(derive_self_seed(s.self_secret, JOB, 2), m)
        self_masks.append(m)
    assert np.array_equal(masked_sum, plain_sum + _sum(self_masks))

    # server: subtract the self masks -> exactly the plain sum mod 2**32
    remove_self_masks(masked_sum, [derive_self_seed(s.self_secret, JOB, 2) for s in sites])
    assert np.array_equal(masked_sum, plain_sum)
    mean = dequantize_mean(masked_sum, cfg, n_sites)
    ref = np.mean([np.clip(s.x.astype(np.float64), -cfg.clip_f32, cfg.clip_f32) for s in sites], axis=0)
    assert np.max(np.abs(mean - ref)) <= error_bound(cfg)


def test_masks_from_another_round_do_not_cancel():
    rng = np.random.default_rng(0)
    sites = _sites(3, 1000, rng)
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    uploads = [_site_upload(s, sites, cfg, round_index=1) for s in sites[:2]]
    uploads.append(_site_upload(sites[2], sites, cfg, round_index=2))  # replayed / stale round
    agg = _sum(uploads)
    remove_self_masks(agg, [derive_self_seed(s.self_secret, JOB, 1) for s in sites[:2]] + [
        derive_self_seed(sites[2].self_secret, JOB, 2)
    ])
    assert not np.array_equal(agg, _sum([s.quantized for s in sites]))


@pytest.mark.parametrize("n_sites,dropped", [(3, ["hospital-2"]), (5, ["hospital-1", "hospital-4"])])
def test_dropout_recovery_with_shamir_reconstructed_keys(n_sites, dropped):
    rng = np.random.default_rng(42)
    sites = _sites(n_sites, 5_000, rng)
    by_name = {s.name: s for s in sites}
    t = n_sites // 2 + 1
    cfg = QuantizationConfig(clip=1.0, n_sites=n_sites)
    round_index = 7

    # setup: each site shares its X25519 private key and its self secret with all sites;
    # holder j keeps share j (as the 70-byte wire encoding)
    holders = {s.name: {} for s in sites}
    for s in sites:
        for kind, secret in (("sk", s.keypair.private_bytes), ("b", s.self_secret)):
            for holder, share in zip(sites, split(secret, t, n_sites)):
                holders[holder.name][(s.name, kind)] = encode_share(share)

    # masking: every site masks with every other site (full graph); the dropped ones never upload
    survivors = [s for s in sites if s.name not in dropped]
    uploads = [_site_upload(s, sites, cfg, round_index) for s in survivors]
    agg = _sum(uploads)

    # unmasking: survivors hand over shares of the survivors' self secrets and the dropped keys
    def reconstruct(owner: str, kind: str) -> bytes:
        shares = [decode_share(holders[h.name][(owner, kind)]) for h in survivors]
        random.Random(owner + kind).shuffle(shares)
        return combine(shares[:t], t)

    survivor_self_seeds = {
        s.name: derive_self_seed(reconstruct(s.name, "b"), JOB, round_index) for s in survivors
    }
    dropped_pair_seeds = {}
    for d in dropped:
        sk_d = reconstruct(d, "sk")
        assert public_key_of(sk_d) == by_name[d].keypair.public  # check against the signed public key
        dropped_pair_seeds[d] = {
            u.name: derive_pair_seed(
                shared_secret(sk_d, u.keypair.public), job_id=JOB, round_index=round_index, site_a=d, site_b=u.name
            )
            for u in survivors
        }

    # the two-step API and the one-pass API agree
    two_step = agg.copy()
    remove_self_masks(two_step, survivor_self_seeds.values())
    for d, seeds in dropped_pair_seeds.items():
        remove_dropped_pair_masks(two_step, d, seeds)
    unmask_aggregate(agg, survivor_self_seeds=survivor_self_seeds, dropped_pair_seeds=dropped_pair_seeds)
    assert np.array_equal(agg, two_step)

    assert np.array_equal(agg, _sum([s.quantized for s in survivors]))
    mean = dequantize_mean(agg, cfg, len(survivors))
    ref = np.mean([np.clip(s.x.astype(np.float64), -1, 1) for s in survivors], axis=0)
    assert np.max(np.abs(mean - ref)) <= error_bound(cfg)


def test_dropped_site_not_recoverable_without_enough_shares():
    sk = generate_keypair().private_bytes
    shares = split(sk, 3, 5)
    from ai4hi_sdk.privacy.secagg.primitives import ShamirError

    with pytest.raises(ShamirError, match="at least 3"):
        combine(shares[:2], 3)


# ----------------------------------------------------------------------------- what the server sees


def _chi2_pvalue(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    stat = float(((counts - expected) ** 2 / expected).sum())
    try:
        from scipy.stats import chi2

        return float(chi2.sf(stat, counts.size - 1))
    except ImportError:  # pragma: no cover - Wilson-Hilferty normal approximation
        import math

        k = counts.size - 1
        z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
        return 0.5 * math.erfc(z / math.sqrt(2))


def test_masked_vector_is_indistinguishable_from_uniform():
    """A highly structured update (a ramp of tiny values, mostly zeros) is uniform once masked."""
    n = 200_000
    x = np.zeros(n, dtype=np.float32)
    x[::10] = np.linspace(-0.01, 0.01, n // 10, dtype=np.float32)
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    q = quantize(x, cfg, seed=bytes(32))
    plain_bytes = np.bincount(q.view(np.uint8), minlength=256)
    assert _chi2_pvalue(plain_bytes) < 1e-12  # sanity: the plain quantised vector is far from uniform

    masked = apply_pairwise_masks(
        q.copy(), "hospital-1", {"hospital-2": os.urandom(32), "hospital-3": os.urandom(32)}, os.urandom(32)
    )
    # byte buckets
    assert _chi2_pvalue(np.bincount(masked.view(np.uint8), minlength=256)) > 1e-4
    # value buckets (top 8 bits of each uint32)
    assert _chi2_pvalue(np.bincount(masked >> 24, minlength=256)) > 1e-4
    # every bit position is balanced (binomial, 6 sigma)
    bits = np.unpackbits(masked.view(np.uint8)).reshape(n, 32).sum(axis=0)
    assert np.all(np.abs(bits - n / 2) < 6 * np.sqrt(n / 4))


def test_server_view_changes_completely_with_one_secret():
    x = np.zeros(50_000, dtype=np.float32)
    cfg = QuantizationConfig(clip=1.0, n_sites=3)
    q = quantize(x, cfg, seed=bytes(32))
    pair = {"hospital-2": bytes(range(32))}
    a = apply_pairwise_masks(q.copy(), "hospital-1", pair, bytes(32))
    b = apply_pairwise_masks(q.copy(), "hospital-1", pair, bytes(31) + b"\x01")
    assert np.mean(a == b) < 1e-3

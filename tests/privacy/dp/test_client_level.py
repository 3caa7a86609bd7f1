"""Client-level (distributed) DP: clipping, per-site noise, noise of the sum."""

import math

import pytest
import torch

from ai4hi_sdk.privacy.dp.accountants import InvalidPrivacyParameter
from ai4hi_sdk.privacy.dp.client_level import (
    add_distributed_gaussian_noise,
    clip_by_l2,
    effective_noise_multiplier,
    l2_norm,
    noise_std_per_site,
    privatize_delta,
    secure_generator,
)


def _delta(scale=1.0):
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(8, 3, 3, 3, generator=g) * scale, "fc.bias": torch.randn(10, generator=g) * scale}


def test_clip_norm_exact():
    delta = _delta(3.0)
    expected = torch.linalg.vector_norm(torch.cat([t.flatten() for t in delta.values()]).double()).item()
    clipped, norm = clip_by_l2(delta, 1.5)
    assert norm == pytest.approx(expected, rel=1e-12)
    assert l2_norm(clipped) == pytest.approx(1.5, rel=1e-6) and l2_norm(clipped) <= 1.5
    # direction kept, inputs untouched
    scale = 1.5 / norm
    for name in delta:
        torch.testing.assert_close(clipped[name], delta[name] * scale)
    assert l2_norm(delta) == pytest.approx(expected, rel=1e-6)
    # below the bound: unchanged
    small, small_norm = clip_by_l2(delta, 10 * expected)
    assert small_norm == pytest.approx(expected) and all(torch.equal(small[k], delta[k]) for k in delta)
    zeros, zero_norm = clip_by_l2({"w": torch.zeros(4)}, 1.0)
    assert zero_norm == 0.0 and torch.equal(zeros["w"], torch.zeros(4))


def test_per_site_noise_std():
    noise_multiplier, clip, n_sites = 1.2, 0.5, 4
    zero = {"w": torch.zeros(1_000_000)}
    noised = add_distributed_gaussian_noise(zero, noise_multiplier, clip, n_sites, secure_generator())
    target = noise_multiplier * clip / math.sqrt(n_sites)
    assert noise_std_per_site(noise_multiplier, clip, n_sites) == target
    assert noised["w"].std().item() == pytest.approx(target, rel=0.01)  # sd of the estimate ~0.07%
    assert abs(noised["w"].mean().item()) < 5 * target / 1000
    assert torch.equal(zero["w"], torch.zeros(1_000_000))  # input untouched


def test_sum_of_sites_noise_matches_target():
    noise_multiplier, clip, n_sites = 0.9, 2.0, 5
    total = torch.zeros(400_000)
    for _ in range(n_sites):  # each site with its own secure generator
        total += add_distributed_gaussian_noise({"w": torch.zeros(400_000)}, noise_multiplier, clip, n_sites)["w"]
    assert total.std().item() == pytest.approx(noise_multiplier * clip, rel=0.01)
    # if only 3 of 5 sites add their share, the sum carries less noise
    assert effective_noise_multiplier(noise_multiplier, 5, 3) == pytest.approx(noise_multiplier * math.sqrt(3 / 5))


def test_secure_generator_is_not_repeatable():
    a, b = secure_generator(), secure_generator()
    assert a.initial_seed() != b.initial_seed()
    assert not torch.equal(torch.randn(16, generator=a), torch.randn(16, generator=b))


def test_privatize_and_dtypes():
    delta = {"w": (torch.ones(1000) * 5).half()}
    noised, norm = privatize_delta(delta, clip=1.0, noise_multiplier=0.0, n_sites=3)
    assert noised["w"].dtype == torch.float16 and norm == pytest.approx(5 * math.sqrt(1000), rel=1e-3)
    assert l2_norm(noised) == pytest.approx(1.0, rel=1e-2)
    with pytest.raises(TypeError, match="num_batches_tracked"):
        clip_by_l2({"bn.num_batches_tracked": torch.tensor(3)}, 1.0)
    for bad in [dict(noise_multiplier=-1.0, clip=1.0, n_sites=2), dict(noise_multiplier=1.0, clip=0.0, n_sites=2),
                dict(noise_multiplier=1.0, clip=1.0, n_sites=0)]:
        with pytest.raises(InvalidPrivacyParameter):
            add_distributed_gaussian_noise({"w": torch.zeros(3)}, **bad)


# --------------------------------------------------------------------------- noise from the verified cohort
def test_noise_share_comes_from_verified_names_never_a_count():
    from ai4hi_sdk.privacy.dp.client_level import noise_share_std

    assert noise_share_std(1.2, 0.5, ["a", "b", "c", "d"]) == pytest.approx(1.2 * 0.5 / 2)
    assert noise_share_std(1.2, 0.5, ("a", "a", "b", "b")) == pytest.approx(1.2 * 0.5 / math.sqrt(2))  # distinct
    assert noise_share_std(1.2, 0.5, None) == pytest.approx(0.6)  # no secure aggregation: the full noise
    for count in (4, 10_000, 4.0, "abcd"):
        with pytest.raises(TypeError, match="names of the participants"):
            noise_share_std(1.2, 0.5, count)
    with pytest.raises(InvalidPrivacyParameter):
        noise_share_std(1.2, 0.5, [])
    # the same path through privatize_delta: names or None
    noised, _ = privatize_delta({"w": torch.zeros(400_000)}, clip=0.5, noise_multiplier=1.2, n_sites=None)
    assert noised["w"].std().item() == pytest.approx(0.6, rel=0.01)
    noised, _ = privatize_delta({"w": torch.zeros(400_000)}, clip=0.5, noise_multiplier=1.2, n_sites=["a", "b", "c", "d"])
    assert noised["w"].std().item() == pytest.approx(0.3, rel=0.01)


def test_noise_left_by_the_survivors():
    from ai4hi_sdk.privacy.dp.client_level import noise_shortfall, surviving_noise_multiplier

    p = ["a", "b", "c", "d"]
    assert surviving_noise_multiplier(1.0, p, p) == pytest.approx(1.0)
    assert surviving_noise_multiplier(1.0, p, ["a", "b", "c"]) == pytest.approx(math.sqrt(3 / 4))
    assert surviving_noise_multiplier(1.0, p, ["a", "b", "x"]) == pytest.approx(math.sqrt(2 / 4))  # x never counted
    assert noise_shortfall(p, p, noise_multiplier=1.0, min_noise_multiplier=1.0) is None
    reason = noise_shortfall(p, ["a", "b"], noise_multiplier=1.0, min_noise_multiplier=0.8)
    assert "only 2 of 4 sites survived" in reason and "0.7071 < the site's minimum 0.8" in reason
    # the sum's noise really is that: 2 of 4 sites' shares
    total = sum(add_distributed_gaussian_noise({"w": torch.zeros(400_000)}, 1.0, 1.0, p)["w"] for _ in range(2))
    assert total.std().item() == pytest.approx(surviving_noise_multiplier(1.0, p, ["a", "b"]), rel=0.01)

"""Shamir t-of-n sharing: reconstruction from any t shares, secrecy below t, errors, share encoding."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ai4hi_sdk.privacy.secagg.primitives.encoding import SHARE_BYTES, WireFormatError, decode_share, encode_share
from ai4hi_sdk.privacy.secagg.primitives.shamir import (
    PRIME,
    ShamirError,
    Share,
    combine,
    interpolate_at,
    secret_to_int,
    split,
)


@st.composite
def sharing(draw):
    secret = draw(st.binary(min_size=1, max_size=64))
    n = draw(st.integers(1, 9))
    t = draw(st.integers(1, n))
    seed = draw(st.integers(0, 2**32))
    shares = split(secret, t, n, rng=random.Random(seed))
    order = draw(st.permutations(range(n)))
    return secret, t, n, [shares[i] for i in order]


@settings(max_examples=80, deadline=None)
@given(sharing())
def test_any_t_shares_recover_the_secret(case):
    secret, t, n, shares = case
    assert len(shares) == n and sorted(s.x for s in shares) == list(range(1, n + 1))
    assert combine(shares[:t], t) == secret
    assert combine(shares, t) == secret  # extra shares are checked for consistency and accepted


@settings(max_examples=80, deadline=None)
@given(sharing())
def test_fewer_than_t_shares_do_not_determine_the_secret(case):
    secret, t, n, shares = case
    if t == 1:
        return
    with pytest.raises(ShamirError, match=f"at least {t}"):
        combine(shares[: t - 1], t)
    # interpolating t-1 shares anyway gives another value (probability of a hit: 1/p ~ 2**-521)
    assert interpolate_at(shares[: t - 1], 0) != secret_to_int(secret)


def test_secret_lengths_and_leading_zeros_survive():
    for secret in (b"\x00", b"\x00" * 32, b"\x00\x01", bytes(range(64))):
        assert combine(split(secret, 2, 3), 2) == secret


def test_t_minus_one_shares_are_uniform_looking_for_two_secrets():
    # with the same randomness, shares of two different secrets differ in every y once t >= 2
    a = split(b"A" * 32, 3, 5, rng=random.Random(1))
    b = split(b"B" * 32, 3, 5, rng=random.Random(1))
    assert all(sa.y != sb.y for sa, sb in zip(a, b))
    assert all(0 <= s.y < PRIME for s in a)


def test_errors():
    shares = split(b"k" * 32, 3, 5)
    with pytest.raises(ShamirError, match="duplicate share index"):
        combine([shares[0], shares[0], shares[1]], 3)
    with pytest.raises(ShamirError, match="different values"):
        combine([shares[0], Share(shares[0].x, (shares[0].y + 1) % PRIME), shares[1]], 3)
    with pytest.raises(ShamirError, match="inconsistent"):
        combine(shares[:3] + [Share(shares[3].x, (shares[3].y + 1) % PRIME)], 3)
    other = split(b"z" * 32, 3, 5)
    with pytest.raises(ShamirError):  # shares of two secrets: caught by the marker (or the extra share)
        combine([shares[0], shares[1], other[2], other[3]], 3)
    for t, n in ((0, 3), (4, 3), (2, 0)):
        with pytest.raises(ShamirError):
            split(b"k", t, n)
    with pytest.raises(ShamirError, match="1..64 bytes"):
        split(b"", 1, 2)
    with pytest.raises(ShamirError, match="1..64 bytes"):
        split(bytes(65), 1, 2)
    with pytest.raises(ShamirError):
        Share(0, 1)
    with pytest.raises(ShamirError):
        Share(1, PRIME)
    with pytest.raises(ShamirError, match="t must be"):
        combine(shares, 0)
    assert "y=" in repr(shares[0]) and str(shares[0].y) not in repr(shares[0])


def test_share_encoding_round_trip_and_strictness():
    for s in split(bytes(range(32)), 3, 5):
        data = encode_share(s)
        assert len(data) == SHARE_BYTES == 70
        assert decode_share(data) == s
    with pytest.raises(WireFormatError, match="70 bytes"):
        decode_share(data[:-1])
    with pytest.raises(WireFormatError, match="70 bytes"):
        decode_share(data + b"\x00")
    with pytest.raises(WireFormatError, match="invalid share"):
        decode_share(bytes(4) + data[4:])  # x = 0
    with pytest.raises(WireFormatError, match="invalid share"):
        decode_share(data[:4] + b"\xff" * 66)  # y >= p


# --------------------------------------------------------------------------- verified reconstruction
def _corrupt(share, rng=random.Random(0)):
    # a random offset: equal offsets on some shares can cancel in the interpolation at 0 (then the
    # secret is still right, and nothing needs leaving out)
    return Share(share.x, (share.y + rng.randrange(1, PRIME)) % PRIME)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(0, 4), st.data())
def test_recover_verified_leaves_out_bad_shares_whenever_t_good_ones_remain(t, extra, data):
    from ai4hi_sdk.privacy.secagg.primitives.shamir import recover_verified

    secret = data.draw(st.binary(min_size=32, max_size=32))
    n = t + extra
    shares = split(secret, t, n, rng=random.Random(data.draw(st.integers(0, 2**32))))
    bad_idx = set(data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n)))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    given_shares = [_corrupt(s, rng) if i in bad_idx else s for i, s in enumerate(shares)]
    accept = lambda b: b == secret  # noqa: E731  (the commitment / public-key check)
    if n - len(bad_idx) >= t:
        got, bad = recover_verified(given_shares, t, accept)
        assert got == secret and {s.x for s in bad} == {shares[i].x for i in bad_idx}
    else:
        with pytest.raises(ShamirError, match="no .* rebuild a secret that passes"):
            recover_verified(given_shares, t, accept)


def test_recover_verified_never_returns_an_unaccepted_secret():
    from ai4hi_sdk.privacy.secagg.primitives.shamir import recover_verified

    shares = split(b"k" * 32, 3, 5, rng=random.Random(1))
    with pytest.raises(ShamirError):
        recover_verified(shares, 3, lambda b: False)
    with pytest.raises(ShamirError, match="at least 3"):
        recover_verified(shares[:2], 3, lambda b: True)
    with pytest.raises(ShamirError, match="gave up"):
        recover_verified([_corrupt(s) for s in shares], 3, lambda b: False, max_candidates=3)

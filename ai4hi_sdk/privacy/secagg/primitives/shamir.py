"""Shamir t-of-n secret sharing over GF(p), p = 2**521 - 1 (a Mersenne prime), Python ints.

A secret of 1..64 bytes (a 32-byte X25519 private key or self-mask secret) is encoded as the
integer ``int.from_bytes(b"\\x01" + secret, "big")`` (the marker byte keeps leading zero bytes and
fixes the length), which is below ``p``. ``split`` draws a random polynomial of degree ``t - 1``
whose constant term is that integer and hands out its values at ``x = 1..n``; any ``t`` shares give
the secret back by Lagrange interpolation at 0 (:func:`combine`); ``t - 1`` shares are jointly
uniform and independent of the secret (perfect secrecy).

Shamir sharing does not authenticate shares: a corrupt share yields a wrong secret. ``combine``
checks any shares beyond the first ``t`` against the interpolated polynomial and the marker byte,
but with exactly ``t`` shares nothing can be checked. :func:`recover_verified` therefore takes an
external check of the secret (a reconstructed X25519 key against its signed public key,
:func:`.keys.public_key_of`; a self-mask secret against its signed commitment, :mod:`.commit`):
it returns a secret only if the check accepts it, and with more than ``t`` shares it finds a
``t``-subset whose secret passes and names the shares that do not lie on that polynomial (the bad
ones), so they can be left out. Shares travel encrypted to their holder; their fixed-length
encoding is :func:`.encoding.encode_share`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from itertools import combinations
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PRIME",
    "PRIME_BYTES",
    "MAX_SECRET_BYTES",
    "MAX_SHARES",
    "Share",
    "ShamirError",
    "split",
    "combine",
    "recover_verified",
    "interpolate_at",
    "secret_to_int",
    "int_to_secret",
]

PRIME = (1 << 521) - 1
PRIME_BYTES = 66  # ceil(521 / 8)
MAX_SECRET_BYTES = 64
MAX_SHARES = (1 << 31) - 1


class ShamirError(ValueError):
    """Invalid sharing parameters, or shares that cannot (or do not consistently) reconstruct."""


@dataclass(frozen=True)
class Share:
    """One share: the polynomial's value ``y`` at ``x`` (``1 <= x <= MAX_SHARES``, ``0 <= y < p``)."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if isinstance(self.x, bool) or not isinstance(self.x, int) or not 1 <= self.x <= MAX_SHARES:
            raise ShamirError(f"share index x must be an integer in [1, {MAX_SHARES}], got {self.x!r}")
        if isinstance(self.y, bool) or not isinstance(self.y, int) or not 0 <= self.y < PRIME:
            raise ShamirError("share value y must be an integer in [0, p)")

    def __repr__(self) -> str:  # shares are secret material: do not print y
        return f"Share(x={self.x}, y=<{PRIME_BYTES} bytes>)"


def secret_to_int(secret: bytes) -> int:
    """Field encoding of a secret (marker byte + secret, big-endian)."""
    if not isinstance(secret, (bytes, bytearray)):
        raise ShamirError(f"secret must be bytes, got {type(secret).__name__}")
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ShamirError(f"secret must be 1..{MAX_SECRET_BYTES} bytes, got {len(secret)}")
    return int.from_bytes(b"\x01" + bytes(secret), "big")


def int_to_secret(value: int) -> bytes:
    """Inverse of :func:`secret_to_int`; raises :class:`ShamirError` if ``value`` is no such encoding
    (the typical result of combining shares of different secrets or corrupt shares)."""
    if not 0 < value < PRIME:
        raise ShamirError("reconstructed value is not a valid secret encoding (inconsistent shares?)")
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    if raw[0] != 1 or not 2 <= len(raw) <= MAX_SECRET_BYTES + 1:
        raise ShamirError("reconstructed value is not a valid secret encoding (inconsistent shares?)")
    return raw[1:]


def _randbelow(rng: Any):
    f = getattr(rng, "randbelow", None)
    if f is not None:
        return f
    randrange = getattr(rng, "randrange", None)
    if randrange is None:
        raise TypeError("rng must provide randbelow(n) (like the secrets module) or randrange(n)")
    return lambda n: randrange(n)


def _check_t_n(t: int, n: int) -> None:
    for name, v in (("t", t), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ShamirError(f"{name} must be an integer, got {v!r}")
    if not 1 <= t <= n <= MAX_SHARES:
        raise ShamirError(f"need 1 <= t <= n <= {MAX_SHARES}, got t={t}, n={n}")


def _eval_poly(coeffs: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):  # Horner
        acc = (acc * x + c) % PRIME
    return acc


def split(secret: bytes, t: int, n: int, rng: Any = secrets) -> list[Share]:
    """Split ``secret`` (1..64 bytes) into ``n`` shares, any ``t`` of which reconstruct it.

    ``rng`` must be a CSPRNG in production (the default, the :mod:`secrets` module); tests may pass
    a seeded ``random.Random``. Note that ``t = 1`` hands every holder the secret itself; SecAgg
    needs ``t`` above the number of colluding parties tolerated (and above half the sites to keep
    the server from obtaining both a site's key and its self secret).
    """
    _check_t_n(t, n)
    randbelow = _randbelow(rng)
    coeffs = [secret_to_int(secret)] + [randbelow(PRIME) for _ in range(t - 1)]
    return [Share(x, _eval_poly(coeffs, x)) for x in range(1, n + 1)]


def _validated(shares: Iterable[Share]) -> list[Share]:
    out: list[Share] = []
    seen: dict[int, int] = {}
    for s in shares:
        if not isinstance(s, Share):
            raise ShamirError(f"expected Share objects, got {type(s).__name__}")
        if s.x in seen:
            raise ShamirError(f"duplicate share index x={s.x}" + ("" if seen[s.x] == s.y else " with different values"))
        seen[s.x] = s.y
        out.append(s)
    return out


def interpolate_at(shares: Sequence[Share], x: int = 0) -> int:
    """Value at ``x`` of the unique polynomial of degree ``< len(shares)`` through ``shares``."""
    pts = _validated(shares)
    if not pts:
        raise ShamirError("no shares given")
    total = 0
    for i, si in enumerate(pts):
        num, den = 1, 1
        for j, sj in enumerate(pts):
            if i != j:
                num = num * (x - sj.x) % PRIME
                den = den * (si.x - sj.x) % PRIME
        total = (total + si.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: Iterable[Share], t: int) -> bytes:
    """Reconstruct the secret from at least ``t`` shares (Lagrange interpolation at 0).

    Raises :class:`ShamirError` for fewer than ``t`` shares, duplicate indices, shares beyond the
    first ``t`` that disagree with the polynomial through the first ``t``, or a result that is not a
    valid secret encoding.
    """
    pts = _validated(shares)
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ShamirError(f"t must be a positive integer, got {t!r}")
    if len(pts) < t:
        raise ShamirError(f"need at least {t} shares to reconstruct, got {len(pts)}")
    base = pts[:t]
    for extra in pts[t:]:
        if interpolate_at(base, extra.x) != extra.y:
            raise ShamirError(f"share x={extra.x} is inconsistent with the others (corrupt or from another secret)")
    return int_to_secret(interpolate_at(base, 0))


def recover_verified(
    shares: Iterable[Share], t: int, accept: Callable[[bytes], bool], *, max_candidates: int = 5_000
) -> tuple[bytes, list[Share]]:
    """Reconstruct a secret that ``accept`` confirms, leaving out shares that are corrupt.

    Tries the first ``t`` shares; if their secret is not accepted, tries ``t``-subsets that leave out
    1, 2, ... of the shares (so the work grows with the number of bad shares, not with all
    ``C(m, t)`` subsets), at most ``max_candidates`` of them (5,000: e.g. up to 4 bad shares of 16;
    each candidate costs ~0.1-0.3 ms). Returns ``(secret, bad)`` where ``bad``
    are the shares that do not lie on the polynomial of the accepted secret.

    Raises :class:`ShamirError` if no ``t`` shares give an accepted secret: fewer than ``t`` shares,
    or fewer than ``t`` good ones (e.g. exactly ``t`` shares and one of them corrupt) -- the caller
    must then abandon, never use an unchecked secret.
    """
    pts = _validated(shares)
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ShamirError(f"t must be a positive integer, got {t!r}")
    if len(pts) < t:
        raise ShamirError(f"need at least {t} shares to reconstruct, got {len(pts)}")
    tried: set[tuple[int, ...]] = set()
    for leave_out in range(len(pts) - t + 1):
        for excluded in combinations(range(len(pts)), leave_out):
            skip = set(excluded)
            base = [p for i, p in enumerate(pts) if i not in skip][:t]
            key = tuple(p.x for p in base)
            if key in tried:  # leaving out shares beyond the first t changes nothing
                continue
            tried.add(key)
            if len(tried) > max_candidates:
                raise ShamirError(f"gave up after {max_candidates} share subsets: too many corrupt shares")
            try:
                secret = int_to_secret(interpolate_at(base, 0))
            except ShamirError:
                continue
            if accept(secret):
                bad = [p for p in pts if interpolate_at(base, p.x) != p.y]
                return secret, bad
    raise ShamirError(f"no {t} of the {len(pts)} shares rebuild a secret that passes its check "
                      "(corrupt shares, and not enough good ones to leave them out)")

"""HKDF-SHA256 (RFC 5869) derivation of per-job, per-round, per-pair mask seeds.

Why the seeds are bound to the job, the round and the pair
----------------------------------------------------------
The masks are one-time pads over Z_2^32. If the same seed masked two vectors ``x`` and ``x'``
(two rounds, two jobs, or two different payloads in one round), anyone holding both masked
vectors -- the server -- would get ``masked - masked' = x - x'`` without any unmasking: the
difference of two model updates of one site. Keys and Shamir shares are exchanged once per job (a
protocol round trip costs seconds, the derivation microseconds), so per-round freshness must come
from here: every seed is ``HKDF(secret, info = domain || purpose || job_id || round || pair)``.

* A masked vector replayed from another round or job carries masks that do not cancel against the
  masks of the current round: the aggregate is garbage rather than a silently accepted stale
  update, and the server can never combine vectors across rounds to cancel masks.
* Reconstructing the seeds of a dropped site in round ``r`` reveals nothing about its masks in other
  rounds -- but note the *source* secret: revealing a site's X25519 private key (to unmask a dropout)
  exposes its pair seeds for **every** round of the job, and revealing a per-job self-mask secret
  exposes its self masks for every round. The protocol must therefore never reveal both for the
  same site across the job's lifetime: retire a site's key pair once its private key has been
  reconstructed, and use a self-mask secret per round (e.g. pre-share one per round at setup) or
  refuse to reconstruct a site's private key after any of its self secrets was revealed.
* ``purpose`` separates independent payloads masked in the same round (``"mask"`` for the packed
  update vector; use another purpose for anything masked separately).

The info string is canonical and unambiguous: a fixed domain tag, then each field as a type byte
(``s`` string, ``i`` integer, ``b`` bytes), a 4-byte big-endian length and the value (UTF-8, or
8-byte big-endian for integers), so no two different tuples of fields encode to the same bytes.
The pair is sorted, so both ends derive the same seed.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "SEED_BYTES",
    "DOMAIN",
    "hkdf_sha256",
    "encode_info",
    "pair_info",
    "derive_pair_seed",
    "derive_self_seed",
]

SEED_BYTES = 32
#: Domain-separation tag; bump the version if the derivation ever changes.
DOMAIN = b"ai4hi-secagg/v1"
_SALT = b"ai4hi-secagg/v1 hkdf salt"
_MAX_ROUND = (1 << 63) - 1


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int = SEED_BYTES) -> bytes:
    """Plain RFC 5869 HKDF-SHA256 (extract then expand)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(bytes(ikm))


def _field(value: str | bytes | int) -> bytes:
    if isinstance(value, bool):
        raise TypeError("booleans are not KDF fields")
    if isinstance(value, int):
        if not 0 <= value <= _MAX_ROUND:
            raise ValueError(f"integer KDF field out of range: {value}")
        tag, data = b"i", struct.pack(">Q", value)
    elif isinstance(value, str):
        tag, data = b"s", value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray)):
        tag, data = b"b", bytes(value)
    else:
        raise TypeError(f"unsupported KDF field type {type(value).__name__}")
    return tag + struct.pack(">I", len(data)) + data


def encode_info(*fields: str | bytes | int) -> bytes:
    """Canonical HKDF info: ``DOMAIN`` then each field length-prefixed (see module docstring)."""
    return DOMAIN + b"".join(_field(f) for f in fields)


def _check_common(job_id: str, round_index: int, purpose: str) -> None:
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("job_id must be a non-empty string")
    if isinstance(round_index, bool) or not isinstance(round_index, int) or not 0 <= round_index <= _MAX_ROUND:
        raise ValueError(f"round_index must be an integer in [0, 2**63), got {round_index!r}")
    if not isinstance(purpose, str) or not purpose:
        raise ValueError("purpose must be a non-empty string")


def pair_info(*, job_id: str, round_index: int, site_a: str, site_b: str, purpose: str = "mask") -> bytes:
    """The info string of :func:`derive_pair_seed` (order-independent in ``site_a``/``site_b``)."""
    _check_common(job_id, round_index, purpose)
    for s in (site_a, site_b):
        if not isinstance(s, str) or not s:
            raise ValueError("site names must be non-empty strings")
    if site_a == site_b:
        raise ValueError(f"a pair seed needs two different sites, got {site_a!r} twice")
    lo, hi = sorted((site_a, site_b))
    return encode_info("pair", purpose, job_id, round_index, lo, hi)


def derive_pair_seed(
    shared_secret: bytes,
    *,
    job_id: str,
    round_index: int,
    site_a: str,
    site_b: str,
    purpose: str = "mask",
) -> bytes:
    """32-byte mask seed of the pair ``{site_a, site_b}`` for one job, round and purpose.

    ``shared_secret`` is the X25519 output (:func:`.keys.shared_secret`). Swapping ``site_a`` and
    ``site_b`` gives the same seed.
    """
    if not isinstance(shared_secret, (bytes, bytearray)) or len(shared_secret) != 32:
        raise ValueError("shared_secret must be the 32-byte X25519 output")
    info = pair_info(job_id=job_id, round_index=round_index, site_a=site_a, site_b=site_b, purpose=purpose)
    return hkdf_sha256(shared_secret, salt=_SALT, info=info)


def derive_self_seed(secret_seed: bytes, job_id: str, round_index: int, *, purpose: str = "self") -> bytes:
    """32-byte self-mask seed of one site for one job and round, from its secret ``secret_seed``
    (at least 16 bytes; the value the site Shamir-shares)."""
    if not isinstance(secret_seed, (bytes, bytearray)) or len(secret_seed) < 16:
        raise ValueError("secret_seed must be at least 16 bytes")
    _check_common(job_id, round_index, purpose)
    return hkdf_sha256(secret_seed, salt=_SALT, info=encode_info("self", purpose, job_id, round_index))

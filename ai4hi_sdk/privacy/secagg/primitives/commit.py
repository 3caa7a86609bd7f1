"""Hash commitment to a site's self-mask secret (SHA-256, bound to job, round and site).

A site draws its per-round self-mask secret ``b`` (32 bytes from the OS) *before* it advertises its
keys and puts ``commit(b)`` into the signed advertisement. When the server rebuilds ``b`` from
Shamir shares it checks the result against that commitment, so a corrupted share cannot silently
change the self mask that is removed from the sum (:func:`.shamir.combine` alone cannot tell a
wrong secret from the right one when exactly ``t`` shares arrive).

Hiding: ``b`` has 256 bits of entropy, so SHA-256 of it reveals nothing usable about ``b``.
Binding: finding a second ``b'`` with the same commitment is a SHA-256 second preimage.
The input is framed like the KDF info strings (:func:`.kdf.encode_info`: length-prefixed fields
under a domain tag), so a commitment of one site, job or round never matches another's.
"""

from __future__ import annotations

import hashlib
import hmac

from .kdf import encode_info

__all__ = ["COMMITMENT_BYTES", "commit_self_secret", "matches_commitment"]

COMMITMENT_BYTES = 32


def commit_self_secret(secret: bytes, *, job_id: str, round_index: int, site: str) -> bytes:
    """32-byte SHA-256 commitment to ``secret`` (the self-mask secret) for one job, round and site."""
    if not isinstance(secret, (bytes, bytearray)) or not 16 <= len(secret) <= 64:
        raise ValueError("the self-mask secret must be 16..64 bytes")
    if not isinstance(site, str) or not site:
        raise ValueError("site must be a non-empty string")
    return hashlib.sha256(encode_info("self-commit", job_id, round_index, site, bytes(secret))).digest()


def matches_commitment(secret: bytes, commitment: bytes, *, job_id: str, round_index: int, site: str) -> bool:
    """True iff ``secret`` opens ``commitment`` (constant-time comparison)."""
    try:
        expected = commit_self_secret(secret, job_id=job_id, round_index=round_index, site=site)
    except ValueError:
        return False
    return hmac.compare_digest(expected, bytes(commitment))

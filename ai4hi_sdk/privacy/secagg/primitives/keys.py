"""X25519 key pairs and Diffie-Hellman shared secrets (RFC 7748), raw 32-byte encodings.

Each site makes one X25519 key pair for secure aggregation (per job); its public key is sent signed
with the site's provisioned certificate key (done by the protocol layer, not here). Two sites
``a``, ``b`` compute the same ``shared_secret(sk_a, pk_b) == shared_secret(sk_b, pk_a)``; the
per-round mask seed is then derived from it with :func:`.kdf.derive_pair_seed`. The raw private key
bytes are what a site Shamir-shares with its neighbours, so the server can recompute a dropped
site's pair seeds with the survivors' public keys.

``cryptography`` rejects peer keys of small order (the all-zero shared secret of RFC 7748 section
6.1) with ``ValueError``; :func:`shared_secret` re-raises that as :class:`KeyAgreementError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = [
    "KEY_BYTES",
    "KeyAgreementError",
    "KeyPair",
    "generate_keypair",
    "private_key_bytes",
    "private_key_from_bytes",
    "public_key_bytes",
    "public_key_from_bytes",
    "public_key_of",
    "shared_secret",
]

KEY_BYTES = 32

PrivateKeyLike = Union[X25519PrivateKey, bytes, bytearray]
PublicKeyLike = Union[X25519PublicKey, bytes, bytearray]


class KeyAgreementError(ValueError):
    """A key could not be decoded, or the key agreement produced a degenerate (all-zero) secret."""


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair. ``public`` is the raw 32-byte public key (what goes on the wire)."""

    private: X25519PrivateKey
    public: bytes

    @property
    def private_bytes(self) -> bytes:
        """Raw 32-byte private key (the secret a site Shamir-shares; never send it in the clear)."""
        return private_key_bytes(self.private)

    def __repr__(self) -> str:  # never print private material
        return f"KeyPair(public={self.public.hex()})"


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from the operating system's CSPRNG."""
    private = X25519PrivateKey.generate()
    return KeyPair(private=private, public=public_key_bytes(private.public_key()))


def private_key_bytes(private: X25519PrivateKey) -> bytes:
    """Raw 32-byte encoding of a private key."""
    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def private_key_from_bytes(data: bytes | bytearray) -> X25519PrivateKey:
    """Decode a raw 32-byte private key (any 32 bytes are valid: X25519 clamps them)."""
    _check_len(data, "X25519 private key")
    return X25519PrivateKey.from_private_bytes(bytes(data))


def public_key_bytes(public: X25519PublicKey) -> bytes:
    """Raw 32-byte encoding of a public key (the u-coordinate, little-endian)."""
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_bytes(data: bytes | bytearray) -> X25519PublicKey:
    """Decode a raw 32-byte public key."""
    _check_len(data, "X25519 public key")
    return X25519PublicKey.from_public_bytes(bytes(data))


def public_key_of(private: PrivateKeyLike) -> bytes:
    """Raw public key of a private key (used to check a reconstructed private key against the
    signed public key it must match)."""
    return public_key_bytes(_private(private).public_key())


def shared_secret(private: PrivateKeyLike, peer_public: PublicKeyLike) -> bytes:
    """X25519(private, peer_public): 32 bytes, the same at both ends.

    Accepts key objects or raw 32-byte encodings. Raises :class:`KeyAgreementError` for malformed
    keys and for small-order peer keys (all-zero result). The output is *not* a uniform key: always
    pass it through :func:`.kdf.derive_pair_seed`.
    """
    try:
        peer = peer_public if isinstance(peer_public, X25519PublicKey) else public_key_from_bytes(peer_public)
        return _private(private).exchange(peer)
    except KeyAgreementError:
        raise
    except ValueError as exc:
        raise KeyAgreementError(f"X25519 key agreement failed: {exc}") from exc


def _private(private: PrivateKeyLike) -> X25519PrivateKey:
    if isinstance(private, X25519PrivateKey):
        return private
    return private_key_from_bytes(private)


def _check_len(data: object, what: str) -> None:
    if not isinstance(data, (bytes, bytearray)):
        raise KeyAgreementError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) != KEY_BYTES:
        raise KeyAgreementError(f"{what} must be {KEY_BYTES} bytes, got {len(data)}")

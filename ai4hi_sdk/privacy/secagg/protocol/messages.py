"""Typed wire messages of the SecAgg+ protocol, one per step, canonical and pickle-free.

    AdvertiseKeys   site -> all   per-round X25519 keys (share encryption c, masking s), signed
    ShareKeys       site -> server -> each neighbour: AES-GCM sealed Shamir shares (self secret b, s key)
    MaskedInput     site -> server: quantised vector + self mask + pairwise masks (uint32)
    UnmaskRequest   server -> sites: who survived (reveal their b-share) and who dropped (reveal s-share)
    UnmaskResponse  site -> server: the requested shares

Every decoder rejects wrong job id / round (replay), wrong kinds, lengths and dtypes with
:class:`ProtocolError`, whose ``reason`` is what gets logged.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..primitives.encoding import WireFormatError, decode_message, encode_message
from ..primitives.kdf import derive_pair_seed

Signer = Callable[[bytes], bytes]
#: ``(site, certificate_pem, signed_bytes, signature) -> None if valid else the reason``
Verifier = Callable[[str, bytes, bytes, bytes], "str | None"]


class ProtocolError(ValueError):
    """A message or request that breaks the protocol; ``reason`` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _decode(data: bytes, kind: str) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{kind}: expected bytes, got {type(data).__name__}")
    try:
        _, fields = decode_message(bytes(data), kind=kind, copy_arrays=True)
    except WireFormatError as e:
        raise ProtocolError(f"{kind}: malformed message: {e}") from e
    return fields


def _check_ctx(kind: str, f: dict, job_id: str, round_index: int) -> None:
    if f.get("job_id") != job_id:
        raise ProtocolError(f"{kind}: job id {f.get('job_id')!r} != expected {job_id!r} (replay?)")
    if f.get("round") != round_index:
        raise ProtocolError(f"{kind}: round {f.get('round')!r} != expected {round_index} (replay?)")
    if not isinstance(f.get("site", ""), str):
        raise ProtocolError(f"{kind}: bad site field")


def _bytes_map(kind: str, value: object, what: str) -> dict[str, bytes]:
    if not isinstance(value, dict) or not all(isinstance(v, (bytes, bytearray)) for v in value.values()):
        raise ProtocolError(f"{kind}: {what} must map site names to bytes")
    return {k: bytes(v) for k, v in value.items()}


def _names(kind: str, value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
        raise ProtocolError(f"{kind}: {what} must be a list of distinct site names")
    return tuple(value)


@dataclass(frozen=True)
class AdvertiseKeys:
    """A site's two fresh X25519 public keys for one round, signed with its provisioned key."""

    job_id: str
    round: int
    site: str
    cipher_pk: bytes  # c: encrypts the shares sent to this site
    mask_pk: bytes  # s: pairwise mask seeds (its private half is Shamir-shared for dropout recovery)
    certificate: bytes
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the signature, canonically encoded."""
        return encode_message("AdvertiseKeys/signed", {
            "job_id": self.job_id, "round": self.round, "site": self.site, "cipher_pk": self.cipher_pk,
            "mask_pk": self.mask_pk, "certificate": self.certificate})

    def encode(self) -> bytes:
        return encode_message("AdvertiseKeys", {
            "job_id": self.job_id, "round": self.round, "site": self.site, "cipher_pk": self.cipher_pk,
            "mask_pk": self.mask_pk, "certificate": self.certificate, "signature": self.signature})

    @classmethod
    def decode(cls, data: bytes, job_id: str, round_index: int) -> "AdvertiseKeys":
        f = _decode(data, "AdvertiseKeys")
        _check_ctx("AdvertiseKeys", f, job_id, round_index)
        for name in ("cipher_pk", "mask_pk"):
            if not isinstance(f.get(name), (bytes, bytearray)) or len(f[name]) != 32:
                raise ProtocolError(f"AdvertiseKeys: {name} must be a 32-byte X25519 public key")
        for name in ("certificate", "signature"):
            if not isinstance(f.get(name), (bytes, bytearray)):
                raise ProtocolError(f"AdvertiseKeys: missing {name}")
        return cls(job_id, round_index, f["site"], bytes(f["cipher_pk"]), bytes(f["mask_pk"]),
                   bytes(f["certificate"]), bytes(f["signature"]))

    def check_signature(self, verify: Verifier) -> str | None:
        """``None`` if the signature and certificate hold, else the reason."""
        return verify(self.site, self.certificate, self.signed_bytes(), self.signature)


@dataclass(frozen=True)
class ShareKeys:
    """A site's sealed shares, one ciphertext per neighbour (``sealed[receiver]``)."""

    job_id: str
    round: int
    site: str
    sealed: dict[str, bytes]

    def encode(self) -> bytes:
        return encode_message("ShareKeys", {"job_id": self.job_id, "round": self.round, "site": self.site,
                                            "sealed": dict(self.sealed)})

    @classmethod
    def decode(cls, data: bytes, job_id: str, round_index: int) -> "ShareKeys":
        f = _decode(data, "ShareKeys")
        _check_ctx("ShareKeys", f, job_id, round_index)
        return cls(job_id, round_index, f["site"], _bytes_map("ShareKeys", f.get("sealed"), "sealed"))


@dataclass(frozen=True)
class MaskedInput:
    """The masked uint32 vector and the neighbours it was masked with."""

    job_id: str
    round: int
    site: str
    vector: np.ndarray
    masked_with: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return encode_message("MaskedInput", {"job_id": self.job_id, "round": self.round, "site": self.site,
                                              "vector": self.vector, "masked_with": list(self.masked_with)})

    @classmethod
    def decode(cls, data: bytes, job_id: str, round_index: int, length: int) -> "MaskedInput":
        f = _decode(data, "MaskedInput")
        _check_ctx("MaskedInput", f, job_id, round_index)
        v = f.get("vector")
        if not isinstance(v, np.ndarray) or v.dtype != np.uint32 or v.ndim != 1:
            raise ProtocolError("MaskedInput: vector must be a 1-D uint32 array")
        if v.shape[0] != length:
            raise ProtocolError(f"MaskedInput: vector length {v.shape[0]} != expected {length}")
        return cls(job_id, round_index, f["site"], v, _names("MaskedInput", f.get("masked_with"), "masked_with"))


@dataclass(frozen=True)
class UnmaskRequest:
    """Survivors (their vectors are in the sum) and dropped sites (shares delivered, no vector)."""

    job_id: str
    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def encode(self) -> bytes:
        return encode_message("UnmaskRequest", {"job_id": self.job_id, "round": self.round, "site": "",
                                                "survivors": sorted(self.survivors), "dropped": sorted(self.dropped)})

    @classmethod
    def decode(cls, data: bytes, job_id: str, round_index: int) -> "UnmaskRequest":
        f = _decode(data, "UnmaskRequest")
        _check_ctx("UnmaskRequest", f, job_id, round_index)
        survivors = _names("UnmaskRequest", f.get("survivors"), "survivors")
        dropped = _names("UnmaskRequest", f.get("dropped"), "dropped")
        if set(survivors) & set(dropped):
            raise ProtocolError("UnmaskRequest: a site cannot be both a survivor and dropped")
        return cls(job_id, round_index, survivors, dropped)


@dataclass(frozen=True)
class UnmaskResponse:
    """Encoded Shamir shares: ``self_shares[v]`` of survivor v's self secret, ``key_shares[d]`` of
    dropped d's mask key."""

    job_id: str
    round: int
    site: str
    self_shares: dict[str, bytes]
    key_shares: dict[str, bytes]

    def encode(self) -> bytes:
        return encode_message("UnmaskResponse", {"job_id": self.job_id, "round": self.round, "site": self.site,
                                                 "self_shares": dict(self.self_shares),
                                                 "key_shares": dict(self.key_shares)})

    @classmethod
    def decode(cls, data: bytes, job_id: str, round_index: int) -> "UnmaskResponse":
        f = _decode(data, "UnmaskResponse")
        _check_ctx("UnmaskResponse", f, job_id, round_index)
        return cls(job_id, round_index, f["site"], _bytes_map("UnmaskResponse", f.get("self_shares"), "self_shares"),
                   _bytes_map("UnmaskResponse", f.get("key_shares"), "key_shares"))


# ----------------------------------------------------------------------------- share sealing


def _share_key(shared_secret: bytes, job_id: str, round_index: int, a: str, b: str) -> bytes:
    return derive_pair_seed(shared_secret, job_id=job_id, round_index=round_index,
                            site_a=a, site_b=b, purpose="share-enc")


def _aad(job_id: str, round_index: int, sender: str, receiver: str) -> bytes:
    return b"\x00".join([b"ai4hi-secagg-share", job_id.encode(), str(round_index).encode(),
                         sender.encode(), receiver.encode()])


def seal_share(plaintext: bytes, shared_secret: bytes, *, job_id: str, round_index: int,
               sender: str, receiver: str) -> bytes:
    """AES-256-GCM encrypt a share for its holder; AAD binds job, round, sender and receiver."""
    nonce = os.urandom(12)
    key = _share_key(shared_secret, job_id, round_index, sender, receiver)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(job_id, round_index, sender, receiver))


def open_share(sealed: bytes, shared_secret: bytes, *, job_id: str, round_index: int,
               sender: str, receiver: str) -> bytes:
    if len(sealed) < 12 + 16:
        raise ProtocolError("share ciphertext too short")
    key = _share_key(shared_secret, job_id, round_index, sender, receiver)
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], _aad(job_id, round_index, sender, receiver))
    except Exception as e:
        raise ProtocolError(f"share from {sender} to {receiver} failed authentication") from e

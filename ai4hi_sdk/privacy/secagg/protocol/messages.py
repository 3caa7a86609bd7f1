"""Typed wire messages of the SecAgg+ protocol (partial: AdvertiseKeys, MaskedInput, share sealing).

Every decoder rejects wrong job id / round (replay), wrong kinds, lengths and dtypes with
:class:`ProtocolError`. Signing is pluggable: ``sign(bytes) -> bytes`` and
``verify(site, bytes, signature) -> bool``.
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
Verifier = Callable[[str, bytes, bytes], bool]


class ProtocolError(ValueError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _decode(data: bytes, kind: str) -> dict:
    try:
        _, fields = decode_message(data, kind=kind, copy_arrays=True)
    except WireFormatError as e:
        raise ProtocolError(f"{kind}: malformed message: {e}") from e
    return fields


def _check_ctx(kind: str, f: dict, job_id: str, round_index: int | None) -> None:
    if f.get("job_id") != job_id:
        raise ProtocolError(f"{kind}: job id {f.get('job_id')!r} != expected {job_id!r} (replay?)")
    if round_index is not None and f.get("round") != round_index:
        raise ProtocolError(f"{kind}: round {f.get('round')!r} != expected {round_index} (replay?)")


def advertise_payload(job_id: str, site: str, public_key: bytes) -> bytes:
    """The bytes a site signs when advertising its key."""
    return b"ai4hi-secagg-advertise\x00" + job_id.encode() + b"\x00" + site.encode() + b"\x00" + public_key


@dataclass(frozen=True)
class AdvertiseKeys:
    job_id: str
    site: str
    public_key: bytes
    signature: bytes

    def encode(self) -> bytes:
        return encode_message("AdvertiseKeys", {"job_id": self.job_id, "site": self.site,
                                                "public_key": self.public_key, "signature": self.signature})

    @classmethod
    def decode(cls, data: bytes, job_id: str) -> "AdvertiseKeys":
        f = _decode(data, "AdvertiseKeys")
        _check_ctx("AdvertiseKeys", f, job_id, None)
        pk = f.get("public_key")
        if not isinstance(pk, (bytes, bytearray)) or len(pk) != 32:
            raise ProtocolError("AdvertiseKeys: public key must be 32 bytes")
        if not isinstance(f.get("site"), str) or not isinstance(f.get("signature"), (bytes, bytearray)):
            raise ProtocolError("AdvertiseKeys: bad site or signature field")
        return cls(job_id, f["site"], bytes(pk), bytes(f["signature"]))

    def verified(self, verify: Verifier) -> bool:
        return bool(verify(self.site, advertise_payload(self.job_id, self.site, self.public_key), self.signature))


@dataclass(frozen=True)
class MaskedInput:
    job_id: str
    round: int
    site: str
    vector: np.ndarray

    def encode(self) -> bytes:
        return encode_message("MaskedInput", {"job_id": self.job_id, "round": self.round,
                                              "site": self.site, "vector": self.vector})

    @classmethod
    def decode(cls, data: bytes, job_id: str, round_index: int, length: int) -> "MaskedInput":
        f = _decode(data, "MaskedInput")
        _check_ctx("MaskedInput", f, job_id, round_index)
        v = f.get("vector")
        if not isinstance(v, np.ndarray) or v.dtype != np.uint32 or v.ndim != 1:
            raise ProtocolError("MaskedInput: vector must be a 1-D uint32 array")
        if v.shape[0] != length:
            raise ProtocolError(f"MaskedInput: vector length {v.shape[0]} != expected {length}")
        return cls(job_id, round_index, f["site"], v)


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

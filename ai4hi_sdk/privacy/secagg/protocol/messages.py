"""Typed wire messages of the SecAgg+ protocol, one per step, canonical and pickle-free.

    AdvertiseKeys         site -> all   per-round X25519 keys (share encryption c, masking s) and a
                                        commitment to the self-mask secret b, signed
    ShareKeys             site -> server -> each neighbour: AES-GCM sealed Shamir shares (b, s key)
    MaskedInput           site -> server: quantised vector + self mask + pairwise masks (uint32)
    ConsistencyRequest    server -> survivors: the survivor set (and who dropped) it will unmask with
    ConsistencySignature  site -> server: the site's signature over exactly that set
    UnmaskRequest         server -> signers: the set again and >= t signatures of it
    UnmaskResponse        site -> server: the requested shares (b of survivors, s of the dropped)

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


def _decode(data: object, kind: str) -> dict:
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


def _survivor_sets(kind: str, f: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    survivors = tuple(sorted(_names(kind, f.get("survivors"), "survivors")))
    dropped = tuple(sorted(_names(kind, f.get("dropped"), "dropped")))
    if set(survivors) & set(dropped):
        raise ProtocolError(f"{kind}: a site cannot be both a survivor and dropped")
    return survivors, dropped


@dataclass(frozen=True)
class AdvertiseKeys:
    """A site's two fresh X25519 public keys for one round, signed with its provisioned key."""

    job_id: str
    round: int
    site: str
    cipher_pk: bytes  # c: encrypts the shares sent to this site
    mask_pk: bytes  # s: pairwise mask seeds (its private half is Shamir-shared for dropout recovery)
    self_commitment: bytes  # SHA-256 commitment to the self-mask secret b (primitives.commit)
    certificate: bytes
    signature: bytes = b""

    def _fields(self) -> dict:
        return {"job_id": self.job_id, "round": self.round, "site": self.site, "cipher_pk": self.cipher_pk,
                "mask_pk": self.mask_pk, "self_commitment": self.self_commitment, "certificate": self.certificate}

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the signature, canonically encoded."""
        return encode_message("AdvertiseKeys/signed", self._fields())

    def encode(self) -> bytes:
        return encode_message("AdvertiseKeys", {**self._fields(), "signature": self.signature})

    @classmethod
    def decode(cls, data: object, job_id: str, round_index: int) -> "AdvertiseKeys":
        f = _decode(data, "AdvertiseKeys")
        _check_ctx("AdvertiseKeys", f, job_id, round_index)
        for name in ("cipher_pk", "mask_pk", "self_commitment"):
            if not isinstance(f.get(name), (bytes, bytearray)) or len(f[name]) != 32:
                raise ProtocolError(f"AdvertiseKeys: {name} must be 32 bytes")
        for name in ("certificate", "signature"):
            if not isinstance(f.get(name), (bytes, bytearray)):
                raise ProtocolError(f"AdvertiseKeys: missing {name}")
        if not f.get("site"):
            raise ProtocolError("AdvertiseKeys: missing site")
        return cls(job_id, round_index, f["site"], bytes(f["cipher_pk"]), bytes(f["mask_pk"]),
                   bytes(f["self_commitment"]), bytes(f["certificate"]), bytes(f["signature"]))

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
    def decode(cls, data: object, job_id: str, round_index: int) -> "ShareKeys":
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
    def decode(cls, data: object, job_id: str, round_index: int, length: int) -> "MaskedInput":
        f = _decode(data, "MaskedInput")
        _check_ctx("MaskedInput", f, job_id, round_index)
        return cls(job_id, round_index, f["site"], _check_vector(f.get("vector"), length),
                   _names("MaskedInput", f.get("masked_with"), "masked_with"))

    def header(self) -> bytes:
        """Everything but the vector (job, round, site, neighbours, length): lets the vector travel
        as a plain uint32 array next to this header and still be bound to its job and round."""
        return encode_message("MaskedInput/header", {"job_id": self.job_id, "round": self.round, "site": self.site,
                                                     "masked_with": list(self.masked_with),
                                                     "length": int(self.vector.shape[0])})

    @classmethod
    def decode_parts(cls, header: bytes, vector: object, job_id: str, round_index: int,
                     length: int) -> "MaskedInput":
        """Inverse of ``(msg.header(), msg.vector)``, with the same checks as :meth:`decode`."""
        f = _decode(header, "MaskedInput/header")
        _check_ctx("MaskedInput", f, job_id, round_index)
        v = _check_vector(vector, length)
        if f.get("length") != v.shape[0]:
            raise ProtocolError(f"MaskedInput: header says length {f.get('length')!r}, vector has {v.shape[0]}")
        return cls(job_id, round_index, f["site"], v, _names("MaskedInput", f.get("masked_with"), "masked_with"))


def _check_vector(v: object, length: int) -> np.ndarray:
    if not isinstance(v, np.ndarray) or v.dtype != np.uint32 or v.ndim != 1:
        raise ProtocolError("MaskedInput: vector must be a 1-D uint32 array")
    if v.shape[0] != length:
        raise ProtocolError(f"MaskedInput: vector length {v.shape[0]} != expected {length}")
    return v


@dataclass(frozen=True)
class ConsistencyRequest:
    """Server -> survivors: the survivor set (vectors in the sum) and the dropped set (shares
    delivered, no vector) the server intends to unmask with. Each survivor signs exactly this pair."""

    job_id: str
    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def encode(self) -> bytes:
        return encode_message("ConsistencyRequest", {"job_id": self.job_id, "round": self.round, "site": "",
                                                     "survivors": sorted(self.survivors),
                                                     "dropped": sorted(self.dropped)})

    @classmethod
    def decode(cls, data: object, job_id: str, round_index: int) -> "ConsistencyRequest":
        f = _decode(data, "ConsistencyRequest")
        _check_ctx("ConsistencyRequest", f, job_id, round_index)
        return cls(job_id, round_index, *_survivor_sets("ConsistencyRequest", f))


@dataclass(frozen=True)
class ConsistencySignature:
    """A site's signature (provisioned key) over the survivor and dropped sets it was told, bound
    to job and round (Bonawitz et al.'s ConsistencyCheck round)."""

    job_id: str
    round: int
    site: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return encode_message("ConsistencySignature/signed", {
            "job_id": self.job_id, "round": self.round, "site": self.site,
            "survivors": sorted(self.survivors), "dropped": sorted(self.dropped)})

    def encode(self) -> bytes:
        return encode_message("ConsistencySignature", {
            "job_id": self.job_id, "round": self.round, "site": self.site, "survivors": sorted(self.survivors),
            "dropped": sorted(self.dropped), "signature": self.signature})

    @classmethod
    def decode(cls, data: object, job_id: str, round_index: int) -> "ConsistencySignature":
        f = _decode(data, "ConsistencySignature")
        _check_ctx("ConsistencySignature", f, job_id, round_index)
        if not isinstance(f.get("signature"), (bytes, bytearray)) or not f.get("site"):
            raise ProtocolError("ConsistencySignature: missing site or signature")
        return cls(job_id, round_index, f["site"], *_survivor_sets("ConsistencySignature", f),
                   bytes(f["signature"]))


@dataclass(frozen=True)
class UnmaskRequest:
    """Survivors (their vectors are in the sum), dropped sites (shares delivered, no vector) and the
    encoded :class:`ConsistencySignature` messages of the survivors that signed this very pair."""

    job_id: str
    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        return encode_message("UnmaskRequest", {"job_id": self.job_id, "round": self.round, "site": "",
                                                "survivors": sorted(self.survivors), "dropped": sorted(self.dropped),
                                                "signatures": list(self.signatures)})

    @classmethod
    def decode(cls, data: object, job_id: str, round_index: int) -> "UnmaskRequest":
        f = _decode(data, "UnmaskRequest")
        _check_ctx("UnmaskRequest", f, job_id, round_index)
        sigs = f.get("signatures")
        if not isinstance(sigs, list) or not all(isinstance(x, (bytes, bytearray)) for x in sigs):
            raise ProtocolError("UnmaskRequest: signatures must be a list of encoded consistency signatures")
        return cls(job_id, round_index, *_survivor_sets("UnmaskRequest", f), tuple(bytes(x) for x in sigs))


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
    def decode(cls, data: object, job_id: str, round_index: int) -> "UnmaskResponse":
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

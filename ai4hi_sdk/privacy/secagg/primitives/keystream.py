"""Cryptographic keystream (the PRG that expands a 32-byte seed into a mask), written in place.

A mask for a vector of ``N`` uint32 elements is the first ``4 N`` bytes of a stream cipher's
keystream under the seed, read as little-endian uint32 words. The keystream is the encryption of
zero bytes, computed with ``cryptography``'s ``update_into`` straight into the caller's buffer (or a
reused, cache-sized scratch), so no buffer is allocated per call and the only per-call allocation is
the cipher context itself.

Ciphers (``cipher=`` everywhere; every site and the server must use the same one -- the protocol
fixes it per job -- or the masks do not cancel):

* ``"aes-128-ctr"`` -- AES-128 in CTR mode, key = first 16 bytes of the seed, 128-bit counter block
  starting at ``seed[16:] XOR nonce`` (``nonce`` defaults to all zero), so every seed byte matters.
  **Default**: fastest on the measured CPUs, and its
  128-bit security equals that of the X25519 key agreement the seeds come from (X25519 is ~128-bit),
  so a 256-bit PRG key would not raise the security of the protocol.
* ``"aes-256-ctr"`` -- AES-256 in CTR mode, key = the whole seed. 14 rounds instead of 10, so ~1.4x
  slower where AES runs on AES-NI without VAES. Use it where policy demands AES-256.
* ``"chacha20"`` -- ChaCha20 (RFC 7539 block function as exposed by ``cryptography``: the 16-byte
  nonce is a 32-bit little-endian block counter followed by a 96-bit nonce). Fastest where the CPU
  has no AES instructions.

Measured on the development machine (2-vCPU VM, Intel Xeon @ 2.5 GHz, Cascade Lake: AES-NI and
AVX-512F but **no VAES**; ``cryptography`` 50 with its bundled OpenSSL; one core, best of 5; other
jobs share the machine, so figures vary by ~15% between runs; GB = 1e9 bytes):

============================================  ===========  ===========  =========
keystream, one core                           aes-128-ctr  aes-256-ctr  chacha20
============================================  ===========  ===========  =========
``update_into`` a cache-resident 128 KiB      4.8 GB/s     3.5 GB/s     3.9 GB/s
``fill_uint32`` into a 40 MB preallocated     3.6 GB/s     2.8 GB/s     3.5 GB/s
``encryptor.update(bytes(n))`` (allocates)    --           0.8 GB/s     --
mask = keystream + in-place uint32 add,       0.85-0.93    0.57-0.71    0.59-0.66
8 masks per chunk, G elements/s per mask
same, 1 mask (vector goes to memory and back  0.62-0.69    0.48-0.61    0.49-0.58
for each mask), G elements/s
============================================  ===========  ===========  =========

(``openssl speed -evp`` on the same machine: aes-128-ctr 4.2, aes-256-ctr 3.3, chacha20 3.1 GB/s.
AES-256 is 14 rounds at one ``aesenc`` per cycle, ~0.9 cycle/byte, i.e. ~3 GB/s at 2.5 GHz: it
cannot reach 4 GB/s = 1e9 uint32/s on this CPU whatever the code does; on CPUs with VAES the
design notes measured ~8 GB/s for it.) Chunks of 128-256 KiB per ``update_into`` call amortise its
~1 us call overhead while the zero input and the output stay in L2.

Security notes: a (seed, nonce, cipher) triple must never mask two different vectors (two-time pad:
the difference of the masked vectors would reveal the difference of the plain ones). The protocol
guarantees this by deriving a fresh seed per job, round, pair and purpose (:mod:`.kdf`). One seed
may produce at most ``2**32`` ChaCha20 blocks (256 GiB); AES-CTR's 128-bit counter never wraps in
practice.
"""

from __future__ import annotations

import sys
from typing import Final, Literal

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "CIPHERS",
    "DEFAULT_CIPHER",
    "SEED_BYTES",
    "NONCE_BYTES",
    "ZERO_NONCE",
    "CipherName",
    "Keystream",
    "fill_uint32",
    "fill_bytes",
    "keystream_bytes",
]

CipherName = Literal["aes-128-ctr", "aes-256-ctr", "chacha20"]
CIPHERS: Final[tuple[str, ...]] = ("aes-128-ctr", "aes-256-ctr", "chacha20")
DEFAULT_CIPHER: Final[str] = "aes-128-ctr"
SEED_BYTES: Final[int] = 32
NONCE_BYTES: Final[int] = 16
ZERO_NONCE: Final[bytes] = bytes(NONCE_BYTES)

#: Bytes encrypted per ``update_into`` call (fits L2 together with the output chunk).
CHUNK_BYTES: Final[int] = 256 * 1024
# Shared, immutable zero plaintext: reused by every call, never written to.
_ZEROS: Final[bytes] = bytes(CHUNK_BYTES)
_ZEROS_VIEW: Final[memoryview] = memoryview(_ZEROS)
_CHACHA_MAX_BYTES: Final[int] = (1 << 32) * 64
_LITTLE_ENDIAN: Final[bool] = sys.byteorder == "little"


def _check_seed_nonce(seed: bytes, nonce: bytes, cipher: str) -> None:
    if cipher not in CIPHERS:
        raise ValueError(f"unknown keystream cipher {cipher!r}; expected one of {', '.join(CIPHERS)}")
    if not isinstance(seed, (bytes, bytearray, memoryview)) or len(seed) != SEED_BYTES:
        raise ValueError(f"keystream seed must be {SEED_BYTES} bytes, got {_describe(seed)}")
    if not isinstance(nonce, (bytes, bytearray, memoryview)) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"keystream nonce must be {NONCE_BYTES} bytes, got {_describe(nonce)}")


def _describe(value: object) -> str:
    try:
        return f"{type(value).__name__} of length {len(value)}"  # type: ignore[arg-type]
    except TypeError:
        return type(value).__name__


def _make_cipher(seed: bytes, nonce: bytes, cipher: str) -> Cipher:
    seed = bytes(seed)
    nonce = bytes(nonce)
    if cipher == "aes-128-ctr":
        # every seed byte counts: the second half of the seed whitens the initial counter block
        counter = bytes(a ^ b for a, b in zip(seed[16:], nonce))
        return Cipher(algorithms.AES(seed[:16]), modes.CTR(counter))
    if cipher == "aes-256-ctr":
        return Cipher(algorithms.AES(seed), modes.CTR(nonce))
    return Cipher(algorithms.ChaCha20(seed, nonce), None)


def _probe_slack(cipher: str) -> int:
    """Extra output bytes ``update_into`` demands beyond the input length (0 for stream modes in
    ``cryptography`` >= 42; older versions demanded ``block_size - 1``)."""
    enc = _make_cipher(bytes(SEED_BYTES), ZERO_NONCE, cipher).encryptor()
    try:
        enc.update_into(bytes(16), bytearray(16))
        return 0
    except ValueError:
        return 15


_SLACK: Final[dict[str, int]] = {name: _probe_slack(name) for name in CIPHERS}


def _as_writable_bytes(out: object, what: str) -> memoryview:
    if isinstance(out, np.ndarray):
        if not out.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous")
        if not out.flags.writeable:
            raise ValueError(f"{what} must be writeable")
        return out.reshape(-1).view(np.uint8).data
    view = memoryview(out)  # type: ignore[arg-type]
    if view.readonly:
        raise ValueError(f"{what} must be writeable")
    if not view.c_contiguous:
        raise ValueError(f"{what} must be contiguous")
    return view.cast("B")


class Keystream:
    """A positioned keystream: successive ``fill_*`` calls continue where the last one stopped.

    Args:
        seed: 32 bytes (the output of :func:`.kdf.derive_pair_seed` and friends).
        nonce: 16-byte initial counter block (AES-CTR) or counter||nonce (ChaCha20).
        cipher: one of :data:`CIPHERS`.

    The object holds only the cipher context (and, if ``cryptography`` ever needs output slack
    again, one small scratch buffer); it is not thread-safe, use one per thread.
    """

    __slots__ = ("cipher", "_enc", "_slack", "_scratch", "_produced")

    def __init__(self, seed: bytes, *, nonce: bytes = ZERO_NONCE, cipher: str = DEFAULT_CIPHER):
        _check_seed_nonce(seed, nonce, cipher)
        self.cipher = cipher
        self._enc = _make_cipher(seed, nonce, cipher).encryptor()
        self._slack = _SLACK[cipher]
        self._scratch = bytearray(CHUNK_BYTES + self._slack) if self._slack else None
        self._produced = 0

    @property
    def position(self) -> int:
        """Number of keystream bytes produced so far."""
        return self._produced

    def fill_bytes(self, out: object) -> None:
        """Write the next ``len(out)`` keystream bytes into ``out`` (any writable contiguous buffer)."""
        view = _as_writable_bytes(out, "keystream output")
        total = view.nbytes
        if self.cipher == "chacha20" and self._produced + total > _CHACHA_MAX_BYTES:
            raise ValueError("ChaCha20 keystream limit (256 GiB per seed) exceeded")
        update_into = self._enc.update_into
        slack = self._slack
        off = 0
        if slack == 0:
            while total - off >= CHUNK_BYTES:
                update_into(_ZEROS, view[off : off + CHUNK_BYTES])
                off += CHUNK_BYTES
            if off < total:
                update_into(_ZEROS_VIEW[: total - off], view[off:])
        else:  # pragma: no cover - only with cryptography versions that need output slack
            while total - off >= CHUNK_BYTES + slack:
                update_into(_ZEROS, view[off : off + CHUNK_BYTES + slack])
                off += CHUNK_BYTES
            scratch = self._scratch
            assert scratch is not None
            while off < total:
                n = min(CHUNK_BYTES, total - off)
                update_into(_ZEROS_VIEW[:n], scratch)
                view[off : off + n] = memoryview(scratch)[:n]
                off += n
        self._produced += total

    def _hot_path_ok(self, nbytes: int) -> bool:
        """True if callers may drive ``self._enc.update_into`` directly for the next ``nbytes`` bytes
        (no output slack needed, little-endian host, within the ChaCha20 limit)."""
        if self._slack or not _LITTLE_ENDIAN:
            return False
        if self.cipher == "chacha20" and self._produced + nbytes > _CHACHA_MAX_BYTES:
            raise ValueError("ChaCha20 keystream limit (256 GiB per seed) exceeded")
        return True

    def _raw_fill_uint32(self, arr: np.ndarray, view: memoryview) -> None:
        """Hot path: fill ``arr`` (uint32, at most ``CHUNK_BYTES`` bytes) whose byte view is
        ``view``, without re-validating either (callers validate their buffers once per call).

        Used by :mod:`.masking` and :mod:`.quantize`.
        """
        n = view.nbytes
        if self._slack:  # pragma: no cover
            self.fill_bytes(view)
        else:
            if self.cipher == "chacha20" and self._produced + n > _CHACHA_MAX_BYTES:
                raise ValueError("ChaCha20 keystream limit (256 GiB per seed) exceeded")
            self._enc.update_into(_ZEROS_VIEW[:n], view)
            self._produced += n
        if not _LITTLE_ENDIAN:  # pragma: no cover
            arr.byteswap(inplace=True)

    def fill_uint32(self, out: np.ndarray) -> np.ndarray:
        """Write the next ``4 * out.size`` keystream bytes into ``out`` as little-endian uint32 words.

        ``out`` must be a C-contiguous, writeable ``uint32`` array (it is returned).
        """
        if not isinstance(out, np.ndarray) or out.dtype != np.uint32:
            raise TypeError(f"out must be a numpy uint32 array, got {getattr(out, 'dtype', type(out).__name__)}")
        self.fill_bytes(out)
        if not _LITTLE_ENDIAN:  # pragma: no cover - the wire meaning is little-endian everywhere
            out.byteswap(inplace=True)
        return out


def fill_uint32(
    seed: bytes, out: np.ndarray, *, nonce: bytes = ZERO_NONCE, cipher: str = DEFAULT_CIPHER
) -> np.ndarray:
    """Fill ``out`` (uint32, C-contiguous, writeable) with the keystream of ``seed`` from its start.

    Returns ``out``. Equivalent to ``Keystream(seed, nonce=nonce, cipher=cipher).fill_uint32(out)``.
    """
    return Keystream(seed, nonce=nonce, cipher=cipher).fill_uint32(out)


def fill_bytes(seed: bytes, out: object, *, nonce: bytes = ZERO_NONCE, cipher: str = DEFAULT_CIPHER) -> None:
    """Fill a writable buffer with the keystream of ``seed`` from its start."""
    Keystream(seed, nonce=nonce, cipher=cipher).fill_bytes(out)


def keystream_bytes(seed: bytes, n: int, *, nonce: bytes = ZERO_NONCE, cipher: str = DEFAULT_CIPHER) -> bytes:
    """The first ``n`` keystream bytes as a new ``bytes`` object (for tests and small uses)."""
    buf = bytearray(n)
    fill_bytes(seed, buf, nonce=nonce, cipher=cipher)
    return bytes(buf)

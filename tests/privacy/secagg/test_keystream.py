"""Known-answer tests for the keystream (NIST SP 800-38A F.5, RFC 8439) and buffer handling."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ai4hi_sdk.privacy.secagg.primitives import keystream as ks

H = bytes.fromhex

# NIST SP 800-38A appendix F.5: plaintext shared by all CTR examples
NIST_PT = H(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
NIST_CTR = H("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
# F.5.5 CTR-AES256.Encrypt
AES256_KEY = H("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
AES256_CT = H(
    "601ec313775789a5b7a7f504bbf3d228"
    "f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988d"
    "dfc9c58db67aada613c2dd08457941a6"
)
# F.5.1 CTR-AES128.Encrypt
AES128_KEY = H("2b7e151628aed2a6abf7158809cf4f3c")
AES128_CT = H(
    "874d6191b620e3261bef6864990db6ce"
    "9806f66b7970fdff8617187bb9fffdff"
    "5ae4df3edbd5d35e5b4f09020db03eab"
    "1e031dda2fbe03d1792170a0f3009cee"
)
# RFC 8439 section 2.3.2: key 00..1f, block counter 1, nonce 000000090000004a00000000
CHACHA_BLOCK = H(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def test_aes256_ctr_nist_f55():
    # the keystream is the encryption of zeros: plaintext XOR ciphertext of the NIST example
    expected = _xor(NIST_PT, AES256_CT)
    assert expected[:16] == H("0bdf7df1591716335e9a8b15c860c502")  # F.5.5 output block 1
    assert ks.keystream_bytes(AES256_KEY, 64, nonce=NIST_CTR, cipher="aes-256-ctr") == expected


def test_aes256_ctr_nist_f55_as_uint32_little_endian():
    out = np.empty(16, dtype=np.uint32)
    ks.fill_uint32(AES256_KEY, out, nonce=NIST_CTR, cipher="aes-256-ctr")
    assert out.tobytes() == _xor(NIST_PT, AES256_CT)
    assert out[0] == int.from_bytes(H("0bdf7df1"), "little")


def test_aes128_ctr_nist_f51_key_is_first_half_of_seed_counter_is_second_half_xor_nonce():
    expected = _xor(NIST_PT, AES128_CT)
    assert ks.keystream_bytes(AES128_KEY + bytes(16), 64, nonce=NIST_CTR, cipher="aes-128-ctr") == expected
    assert ks.keystream_bytes(AES128_KEY + NIST_CTR, 64, cipher="aes-128-ctr") == expected
    whitening = os.urandom(16)
    nonce = _xor(NIST_CTR, whitening)
    assert ks.keystream_bytes(AES128_KEY + whitening, 64, nonce=nonce, cipher="aes-128-ctr") == expected


def test_chacha20_rfc8439_block():
    nonce = (1).to_bytes(4, "little") + H("000000090000004a00000000")
    assert ks.keystream_bytes(bytes(range(32)), 64, nonce=nonce, cipher="chacha20") == CHACHA_BLOCK


def test_default_cipher_is_known():
    assert ks.DEFAULT_CIPHER in ks.CIPHERS


@pytest.mark.parametrize("cipher", ks.CIPHERS)
@pytest.mark.parametrize("n_words", [0, 1, 3, ks.CHUNK_BYTES // 4 - 1, ks.CHUNK_BYTES // 4, ks.CHUNK_BYTES // 2 + 7])
def test_fill_matches_one_shot_encryption_across_chunk_boundaries(cipher, n_words):
    seed = os.urandom(32)
    out = np.full(n_words, 0xDEADBEEF, dtype=np.uint32)
    ks.fill_uint32(seed, out, cipher=cipher)
    ref_cipher = {
        "aes-128-ctr": lambda: Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])),
        "aes-256-ctr": lambda: Cipher(algorithms.AES(seed), modes.CTR(bytes(16))),
        "chacha20": lambda: Cipher(algorithms.ChaCha20(seed, bytes(16)), None),
    }[cipher]()
    assert out.tobytes() == ref_cipher.encryptor().update(bytes(4 * n_words))


def test_stream_continues_where_it_stopped():
    seed = os.urandom(32)
    whole = np.empty(1000, dtype=np.uint32)
    ks.fill_uint32(seed, whole)
    stream = ks.Keystream(seed)
    parts = [np.empty(n, dtype=np.uint32) for n in (1, 10, 489, 500)]
    for p in parts:
        stream.fill_uint32(p)
    assert np.array_equal(np.concatenate(parts), whole)
    assert stream.position == 4000


def test_fill_bytes_into_bytearray_and_2d_array():
    seed = os.urandom(32)
    buf = bytearray(40)
    ks.fill_bytes(seed, buf)
    arr = np.empty((2, 5), dtype=np.uint32)
    ks.fill_uint32(seed, arr)
    assert arr.tobytes() == bytes(buf)


def test_distinct_seeds_and_nonces_give_distinct_streams():
    seed = os.urandom(32)
    a = ks.keystream_bytes(seed, 64)
    assert a != ks.keystream_bytes(os.urandom(32), 64)
    assert a != ks.keystream_bytes(seed, 64, nonce=b"\x01" + bytes(15))
    assert a != ks.keystream_bytes(seed, 64, cipher="aes-256-ctr")


def test_buffer_and_argument_errors():
    seed = bytes(32)
    with pytest.raises(TypeError, match="uint32"):
        ks.fill_uint32(seed, np.empty(4, dtype=np.int32))
    with pytest.raises(ValueError, match="contiguous"):
        ks.fill_uint32(seed, np.empty(8, dtype=np.uint32)[::2])
    ro = np.empty(4, dtype=np.uint32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        ks.fill_uint32(seed, ro)
    with pytest.raises(ValueError, match="writeable"):
        ks.fill_bytes(seed, b"immutable")
    with pytest.raises(ValueError, match="32 bytes"):
        ks.Keystream(bytes(16))
    with pytest.raises(ValueError, match="16 bytes"):
        ks.Keystream(seed, nonce=bytes(12))
    with pytest.raises(ValueError, match="unknown keystream cipher"):
        ks.Keystream(seed, cipher="rc4")


@pytest.mark.parametrize("cipher", ks.CIPHERS)
def test_every_seed_byte_matters(cipher):
    seed = bytearray(os.urandom(32))
    base = ks.keystream_bytes(bytes(seed), 32, cipher=cipher)
    for i in range(32):
        flipped = bytearray(seed)
        flipped[i] ^= 0x80
        assert ks.keystream_bytes(bytes(flipped), 32, cipher=cipher) != base

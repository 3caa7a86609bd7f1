"""Known-answer and property tests for X25519 key agreement and HKDF seed derivation."""

from __future__ import annotations

import pytest

from ai4hi_sdk.privacy.secagg.primitives import kdf, keys

H = bytes.fromhex

# RFC 7748 section 5.2: (scalar, u-coordinate, output u-coordinate)
RFC7748_SCALARMULT = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
# RFC 7748 section 6.1
ALICE_SK = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PK = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_SK = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PK = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


@pytest.mark.parametrize("scalar,u,out", RFC7748_SCALARMULT)
def test_x25519_rfc7748_scalar_mult(scalar, u, out):
    assert keys.shared_secret(H(scalar), H(u)) == H(out)


def test_x25519_rfc7748_diffie_hellman():
    assert keys.public_key_of(H(ALICE_SK)) == H(ALICE_PK)
    assert keys.public_key_of(H(BOB_SK)) == H(BOB_PK)
    assert keys.shared_secret(H(ALICE_SK), H(BOB_PK)) == H(SHARED)
    assert keys.shared_secret(keys.private_key_from_bytes(H(BOB_SK)), keys.public_key_from_bytes(H(ALICE_PK))) == H(
        SHARED
    )


def test_generated_keypairs_agree_and_round_trip():
    a, b = keys.generate_keypair(), keys.generate_keypair()
    assert len(a.public) == 32 and len(a.private_bytes) == 32
    assert keys.shared_secret(a.private, b.public) == keys.shared_secret(b.private_bytes, a.public)
    assert keys.public_key_of(a.private_bytes) == a.public
    assert keys.private_key_bytes(keys.private_key_from_bytes(a.private_bytes)) == a.private_bytes
    assert a.private_bytes.hex() not in repr(a)


def test_key_errors():
    with pytest.raises(keys.KeyAgreementError, match="32 bytes"):
        keys.public_key_from_bytes(bytes(31))
    with pytest.raises(keys.KeyAgreementError, match="32 bytes"):
        keys.shared_secret(bytes(33), bytes(32))
    with pytest.raises(keys.KeyAgreementError, match="bytes"):
        keys.public_key_from_bytes("00" * 32)  # type: ignore[arg-type]
    # small-order point u = 0: the all-zero shared secret must be refused
    with pytest.raises(keys.KeyAgreementError):
        keys.shared_secret(keys.generate_keypair().private, bytes(32))


def test_hkdf_rfc5869_test_case_1():
    okm = kdf.hkdf_sha256(
        H("0b" * 22), salt=H("000102030405060708090a0b0c"), info=H("f0f1f2f3f4f5f6f7f8f9"), length=42
    )
    assert okm == H("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def _pair(**over):
    args = dict(job_id="job-1", round_index=3, site_a="hospital-1", site_b="hospital-2", purpose="mask")
    args.update(over)
    return kdf.derive_pair_seed(H(SHARED), **args)


def test_pair_seed_is_order_independent_and_bound_to_context():
    s = _pair()
    assert len(s) == 32
    assert s == _pair(site_a="hospital-2", site_b="hospital-1")
    variants = [
        _pair(job_id="job-2"),
        _pair(round_index=4),
        _pair(site_b="hospital-3"),
        _pair(purpose="metrics"),
        kdf.derive_pair_seed(H(ALICE_PK), job_id="job-1", round_index=3, site_a="hospital-1", site_b="hospital-2"),
    ]
    assert len({s, *variants}) == 1 + len(variants)


def test_info_encoding_is_unambiguous():
    # naive concatenation would make ("ab", "c") and ("a", "bc") collide
    a = kdf.pair_info(job_id="j", round_index=0, site_a="ab", site_b="c")
    b = kdf.pair_info(job_id="j", round_index=0, site_a="a", site_b="bc")
    assert a != b
    assert kdf.encode_info("ab", "c") != kdf.encode_info("a", "bc")
    assert kdf.encode_info("x", 1) != kdf.encode_info("x", "\x00\x00\x00\x00\x00\x00\x00\x01")
    assert a.startswith(kdf.DOMAIN)


def test_self_seed_bound_to_job_and_round():
    secret = bytes(range(32))
    seeds = {
        kdf.derive_self_seed(secret, "job-1", 0),
        kdf.derive_self_seed(secret, "job-1", 1),
        kdf.derive_self_seed(secret, "job-2", 0),
        kdf.derive_self_seed(bytes(32), "job-1", 0),
    }
    assert len(seeds) == 4
    # a self seed never equals a pair seed from the same key material
    assert kdf.derive_self_seed(H(SHARED), "job-1", 3) != _pair()


@pytest.mark.parametrize(
    "over,match",
    [
        (dict(site_b="hospital-1"), "two different sites"),
        (dict(round_index=-1), "round_index"),
        (dict(round_index=True), "round_index"),
        (dict(job_id=""), "job_id"),
        (dict(site_a=""), "site names"),
        (dict(purpose=""), "purpose"),
    ],
)
def test_pair_seed_errors(over, match):
    with pytest.raises(ValueError, match=match):
        _pair(**over)


def test_seed_input_errors():
    with pytest.raises(ValueError, match="32-byte"):
        kdf.derive_pair_seed(bytes(16), job_id="j", round_index=0, site_a="a", site_b="b")
    with pytest.raises(ValueError, match="16 bytes"):
        kdf.derive_self_seed(bytes(8), "j", 0)

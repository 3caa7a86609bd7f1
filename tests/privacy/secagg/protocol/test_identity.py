"""Signing with a provisioned key and verification against the consortium root CA."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ai4hi_sdk.privacy.secagg.protocol.identity import (CertificateVerifier, IdentityError, SiteIdentity,
                                                        make_throwaway_ca)


def _rsa_kit(folder, cn, *, expired=False):
    """An NVFlare-like kit: RSA-2048 root and client certificate (what `nvflare provision` writes)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "consortium-root")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=9))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    end = now - dt.timedelta(hours=1) if expired else now + dt.timedelta(days=9)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(days=2)).not_valid_after(end).sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True)
    (folder / "client.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                                          serialization.NoEncryption()))
    (folder / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "rootCA.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))


def test_rsa_kit_signs_and_verifies(tmp_path):
    _rsa_kit(tmp_path / "kit", "hospital-1")
    ident = SiteIdentity.load(tmp_path / "kit", "hospital-1")
    verifier = CertificateVerifier(ident.root_ca_pem)
    sig = ident.sign(b"payload")
    assert verifier.check("hospital-1", ident.certificate_pem, b"payload", sig) is None
    assert verifier.check("hospital-1", ident.certificate_pem, b"payloaD", sig) == "bad signature"
    assert "not for site" in verifier.check("hospital-2", ident.certificate_pem, b"payload", sig)
    assert "hospital-1" not in repr(ident.private_key.__class__) and "key" not in repr(ident).lower().replace("name", "")


def test_expired_and_foreign_certificates_are_refused(tmp_path):
    _rsa_kit(tmp_path / "old", "hospital-1", expired=True)
    old = SiteIdentity.load(tmp_path / "old", "hospital-1")
    assert "not valid now" in CertificateVerifier(old.root_ca_pem).check(
        "hospital-1", old.certificate_pem, b"x", old.sign(b"x"))
    make_throwaway_ca(["hospital-1"], {"hospital-1": tmp_path / "sim"})
    sim = SiteIdentity.load(tmp_path / "sim", "hospital-1")
    assert CertificateVerifier(sim.root_ca_pem).check("hospital-1", sim.certificate_pem, b"x", sim.sign(b"x")) is None
    assert "not issued by" in CertificateVerifier(old.root_ca_pem).check(
        "hospital-1", sim.certificate_pem, b"x", sim.sign(b"x"))
    assert oct((tmp_path / "sim" / "client.key").stat().st_mode)[-3:] == "600"


def test_missing_identity_is_a_clear_error(tmp_path):
    with pytest.raises(IdentityError, match="client.key"):
        SiteIdentity.load(tmp_path, "hospital-1")

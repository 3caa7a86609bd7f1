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


# --------------------------------------------------------------------------- site roles (provisioned kits)
def test_provisioned_certificates_by_role(kits):
    """What ``nvflare provision`` writes: only admin certificates carry a role; the server's looks
    like a site's and is told apart by the server identity the site kit names."""
    from ai4hi_sdk.privacy.secagg.protocol.identity import certificate_refusal, server_identities

    load = lambda path: x509.load_pem_x509_certificate(path.read_bytes())  # noqa: E731
    server_names = server_identities(kits.sites["hospital-1"])
    assert server_names == {"localhost"}
    assert certificate_refusal(load(kits.sites["hospital-2"] / "client.crt"), server_names) is None
    assert "server identity" in certificate_refusal(load(kits.server / "server.crt"), server_names)
    assert certificate_refusal(load(kits.server / "server.crt"), ()) is None  # hence server_names is needed
    assert "NVFlare role 'lead'" in certificate_refusal(load(kits.admins["lead@consortium.example.org"] / "client.crt"))
    assert "NVFlare role 'org_admin'" in certificate_refusal(load(kits.admins["it@hospital-1.example.org"] / "client.crt"))
    assert "CA certificate" in certificate_refusal(load(kits.sites["hospital-1"] / "rootCA.pem"))
    # the verifier applies it, and says so in its reason
    lead = kits.admin("lead@consortium.example.org")
    verifier = CertificateVerifier(kits.root_ca, server_names=server_names)
    reason = verifier.check(lead.name, lead.certificate_pem, b"x", lead.sign(b"x"))
    assert "admin certificate" in reason
    assert CertificateVerifier(kits.root_ca, require_site=False).check(
        lead.name, lead.certificate_pem, b"x", lead.sign(b"x")) is None
    site = kits.site("hospital-3")
    assert verifier.check("hospital-3", site.certificate_pem, b"x", site.sign(b"x")) is None


@pytest.mark.parametrize("role,refused", [("client", False), ("server", True), ("lead", True), ("org_admin", True),
                                          ("member", True), ("project_admin", True), ("relay", True)])
def test_csr_signed_certificate_roles(role, refused):
    """``nvflare cert sign -t TYPE`` puts TYPE into UNSTRUCTURED_NAME for every certificate."""
    from ai4hi_sdk.privacy.secagg.protocol.identity import certificate_refusal

    now = dt.datetime.now(dt.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hospital-1"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "h1"),
                      x509.NameAttribute(NameOID.UNSTRUCTURED_NAME, role)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    assert (certificate_refusal(cert) is not None) == refused


def test_server_identities_needs_a_readable_fed_client_json(tmp_path):
    from ai4hi_sdk.privacy.secagg.protocol.identity import server_identities

    with pytest.raises(IdentityError, match="fed_client.json"):
        server_identities(tmp_path)
    (tmp_path / "fed_client.json").write_text('{"servers": [{"name": "p"}]}')
    with pytest.raises(IdentityError, match="no server identity"):
        server_identities(tmp_path)
    (tmp_path / "fed_client.json").write_text('{"servers": [{"name": "p", "identity": "fl.example.org"}]}')
    assert server_identities(tmp_path) == {"fl.example.org"}

"""Kit inspection and certificate checks on real ``nvflare provision`` output."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ai4hi_sdk.deploy.kit import check_certificates, load_kit
from ai4hi_sdk.errors import UserError
from tests.deploy.conftest import provision_example


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    return provision_example(tmp_path_factory.mktemp("kits"))


def _levels(checks):
    return {c.name: c.level for c in checks}


def test_kinds_names_and_endpoints(kits):
    server = load_kit(kits["server"])
    site = load_kit(kits["sites"]["hospital-2"]["kit"])
    admin = load_kit(kits["admins"]["lead@consortium.example.org"])
    assert (server.kind, server.name) == ("server", "localhost")
    assert (site.kind, site.name) == ("site", "hospital-2")
    assert (admin.kind, admin.name) == ("admin", "lead@consortium.example.org")
    assert site.server_target[0] == "localhost" and site.server_target[1] == server.server_target[1]
    assert admin.admin_port == server.admin_port
    assert site.requested_gpus == 1 and load_kit(kits["sites"]["hospital-1"]["kit"]).requested_gpus == 0


def test_wrong_kind_or_not_a_kit_is_a_clear_error(kits, tmp_path):
    with pytest.raises(UserError, match="an admin kit; this command needs a site or server kit"):
        load_kit(kits["admins"]["lead@consortium.example.org"], expect=("site", "server"))
    with pytest.raises(UserError, match="not a provisioned kit"):
        load_kit(tmp_path)


def test_fresh_kits_pass_every_certificate_check(kits):
    for path in [kits["server"], *(s["kit"] for s in kits["sites"].values()), *kits["admins"].values()]:
        checks = check_certificates(load_kit(path))
        assert all(c.level == "ok" for c in checks), checks


def test_expired_or_not_yet_valid_certificates_are_detected(kits):
    kit = load_kit(kits["sites"]["hospital-1"]["kit"])
    later = check_certificates(kit, now=datetime.now(timezone.utc) + timedelta(days=3650))
    assert _levels(later)["certificate validity"] == "fail"
    assert "expired" in next(c.detail for c in later if c.name == "certificate validity")
    earlier = check_certificates(kit, now=datetime.now(timezone.utc) - timedelta(days=2))
    assert _levels(earlier)["certificate validity"] == "fail"


def _copy_kit(kits, tmp_path, site="hospital-1") -> Path:
    dest = tmp_path / site
    shutil.copytree(kits["sites"][site]["kit"], dest)
    return dest


def test_certificate_from_another_ca_is_detected(kits, tmp_path):
    """A client.crt with the right name but signed by someone else's CA (tampered kit)."""
    dest = _copy_kit(kits, tmp_path)
    genuine = x509.load_pem_x509_certificate((dest / "startup" / "client.crt").read_bytes())
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(timezone.utc)
    forged = (x509.CertificateBuilder().subject_name(genuine.subject).issuer_name(genuine.issuer)
              .public_key(forger.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
              .sign(forger, hashes.SHA256()))
    (dest / "startup" / "client.crt").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    levels = _levels(check_certificates(load_kit(dest)))
    assert levels["certificate signature"] == "fail"
    assert levels["private key"] == "fail"  # the kit's key does not belong to the forged certificate


def test_kit_from_another_consortium_root_is_detected(kits, tmp_path):
    dest = _copy_kit(kits, tmp_path)
    other = tmp_path / "other"
    other_kits = provision_example(other)
    shutil.copyfile(Path(other_kits["server"]) / "startup" / "rootCA.pem", dest / "startup" / "rootCA.pem")
    checks = check_certificates(load_kit(dest))
    assert _levels(checks)["certificate signature"] == "fail"
    assert "NOT signed" in next(c.detail for c in checks if c.name == "certificate signature")


def test_unreadable_certificate_is_a_failure_not_a_crash(kits, tmp_path):
    dest = _copy_kit(kits, tmp_path)
    (dest / "startup" / "client.crt").write_text("garbage")
    checks = check_certificates(load_kit(dest))
    assert [c.level for c in checks] == ["fail"]

"""Site identities for secure aggregation: sign with the provisioned key, verify against the root CA.

A site signs its per-round public keys with the private key NVFlare provisioning gave it
(``startup/client.key``, certificate ``startup/client.crt``, consortium root ``startup/rootCA.pem``)
and sends its certificate along. Every other site checks that the certificate was issued by the
consortium's root CA, is valid now, names the advertising site (common name), and that the
signature verifies under it -- so the server, which only relays keys, cannot substitute its own.

The simulator has no provisioning: :func:`make_throwaway_ca` writes the same files for each
simulated site from a CA made for the one run, so the same code path runs there.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

#: NVFlare kit file names (client kits; the server kit uses server.key / server.crt)
CLIENT_KEY, CLIENT_CERT, ROOT_CA = "client.key", "client.crt", "rootCA.pem"


class IdentityError(ValueError):
    """A site's identity files are missing or unusable."""


def _sign(key, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise IdentityError(f"unsupported signing key type {type(key).__name__}")


def _verify(public_key, signature: bytes, data: bytes) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH),
                          hashes.SHA256())
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
    else:
        raise InvalidSignature(f"unsupported key type {type(public_key).__name__}")


@dataclass(frozen=True)
class SiteIdentity:
    """A site's provisioned signing key, its certificate (PEM) and the consortium root CA (PEM)."""

    name: str
    private_key: object
    certificate_pem: bytes
    root_ca_pem: bytes

    @classmethod
    def load(cls, startup_dir: str | Path, name: str) -> "SiteIdentity":
        """Read ``client.key``, ``client.crt`` and ``rootCA.pem`` from a kit's ``startup`` folder."""
        folder = Path(startup_dir)
        paths = [folder / CLIENT_KEY, folder / CLIENT_CERT, folder / ROOT_CA]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise IdentityError(f"secure aggregation needs the site's provisioned identity; missing {missing}")
        try:
            key = serialization.load_pem_private_key(paths[0].read_bytes(), password=None)
        except (ValueError, TypeError) as err:
            raise IdentityError(f"cannot read the site key {paths[0]}: {err}") from err
        return cls(name, key, paths[1].read_bytes(), paths[2].read_bytes())

    def sign(self, data: bytes) -> bytes:
        return _sign(self.private_key, data)

    def __repr__(self) -> str:  # never print key material
        return f"SiteIdentity(name={self.name!r})"


class CertificateVerifier:
    """Checks ``(site, certificate, data, signature)`` against one root CA.

    :meth:`check` returns ``None`` when everything holds, else the reason (for the log).
    """

    def __init__(self, root_ca_pem: bytes):
        self.root = x509.load_pem_x509_certificate(root_ca_pem)

    def check(self, site: str, certificate_pem: bytes, data: bytes, signature: bytes) -> str | None:
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError as err:
            return f"unreadable certificate: {err}"
        try:
            cert.verify_directly_issued_by(self.root)
        except (ValueError, TypeError, InvalidSignature):
            return "certificate not issued by the consortium root CA"
        now = dt.datetime.now(dt.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return f"certificate not valid now (valid {cert.not_valid_before_utc} .. {cert.not_valid_after_utc})"
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [site]:
            return f"certificate is for {names}, not for site {site!r}"
        try:
            _verify(cert.public_key(), signature, data)
        except InvalidSignature:
            return "bad signature"
        return None


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_throwaway_ca(sites: list[str], startup_dirs: dict[str, Path], *, days: int = 2) -> bytes:
    """Create a root CA for one simulated run and write ``client.key``/``client.crt``/``rootCA.pem``
    into each site's startup folder (``startup_dirs[site]``). Returns the root CA PEM.

    Ed25519 keys: fast to make; :class:`SiteIdentity` and :class:`CertificateVerifier` also accept
    the RSA keys NVFlare provisioning writes.
    """
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ed25519.Ed25519PrivateKey.generate()
    ca_cert = (x509.CertificateBuilder().subject_name(_name("ai4hi-simulation-root")).issuer_name(
        _name("ai4hi-simulation-root")).public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, None))
    root_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    for site in sites:
        key = ed25519.Ed25519PrivateKey.generate()
        cert = (x509.CertificateBuilder().subject_name(_name(site)).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                .sign(ca_key, None))
        folder = Path(startup_dirs[site])
        folder.mkdir(parents=True, exist_ok=True)
        key_path = folder / CLIENT_KEY
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        (folder / CLIENT_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / ROOT_CA).write_bytes(root_pem)
    return root_pem

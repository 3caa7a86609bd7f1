"""Site identities for secure aggregation: sign with the provisioned key, verify against the root CA.

A site signs its per-round public keys with the private key NVFlare provisioning gave it
(``startup/client.key``, certificate ``startup/client.crt``, consortium root ``startup/rootCA.pem``)
and sends its certificate along. Every other site checks that the certificate was issued by the
consortium's root CA, is valid now, names the advertising site (common name), **is a site's
certificate** (below), and that the signature verifies under it -- so the server, which only
relays keys, can neither substitute its own keys nor join as a participant.

Which certificates are a site's (NVFlare 2.9, read from ``nvflare/lighter``): the consortium root
CA signs the server's, every site's and every admin's certificate. ``nvflare provision``
(``lighter/impl/cert.py`` + ``lighter/utils.py:x509_name``) writes the subject ``CN=<name>,
O=<org>`` for the server and for clients alike (both with subjectAltName ``DNS:<name>``, no key
usage), and adds ``UNSTRUCTURED_NAME=<role>`` (``project_admin``, ``org_admin``, ``lead``,
``member``) only to admin certificates; ``nvflare cert sign -t TYPE`` (CSR workflow) puts the type
(``client``, ``server``, ``org_admin``, ``lead``, ``member``) in ``UNSTRUCTURED_NAME`` for every
certificate. :func:`certificate_refusal` therefore refuses: a CA certificate; any
``UNSTRUCTURED_NAME`` other than ``client`` (admins; a CSR-signed server); and -- since a
provisioned server certificate looks exactly like a client's -- a certificate whose common name is
the server's identity, which every site kit names in ``startup/fed_client.json``
(:func:`server_identities`). The explicit participant set of the job (the protocol client's
``participants``) is the second, independent pin.

What no certificate check can stop: whoever holds the root CA's private key (NVFlare keeps it in
the provisioning workspace, ``state/cert.json``) can mint a certificate named after any site. Keep
that workspace offline, away from the server.

The simulator has no provisioning: :func:`make_throwaway_ca` writes the same files for each
simulated site from a CA made for the one run, so the same code path runs there.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

#: NVFlare kit file names (client and admin kits; the server kit uses server.key / server.crt)
CLIENT_KEY, CLIENT_CERT, ROOT_CA = "client.key", "client.crt", "rootCA.pem"
SERVER_KEY, SERVER_CERT = "server.key", "server.crt"
#: the site kit's description of the server it connects to
FED_CLIENT = "fed_client.json"
#: the one ``UNSTRUCTURED_NAME`` value a site's certificate may carry (``nvflare cert sign -t client``)
SITE_ROLE = "client"
#: NVFlare admin roles (lighter ``PropKey.ROLE`` values and ``nvflare cert`` admin types)
ADMIN_ROLES = ("project_admin", "org_admin", "lead", "member")


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
    def load(cls, startup_dir: str | Path, name: str, *, key_file: str = CLIENT_KEY,
             cert_file: str = CLIENT_CERT) -> "SiteIdentity":
        """Read ``client.key``, ``client.crt`` and ``rootCA.pem`` from a kit's ``startup`` folder
        (``key_file``/``cert_file`` name other kit files, e.g. a server kit's, for tests)."""
        folder = Path(startup_dir)
        paths = [folder / key_file, folder / cert_file, folder / ROOT_CA]
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


def server_identities(startup_dir: str | Path) -> frozenset[str]:
    """The server identities (certificate common names) a site kit connects to: ``identity`` of every
    entry of ``servers`` in ``startup/fed_client.json``. Raises :class:`IdentityError` if the file is
    missing or unreadable (a site must know whose certificate to refuse)."""
    path = Path(startup_dir) / FED_CLIENT
    try:
        servers = json.loads(path.read_text())["servers"]
        names = frozenset(str(s["identity"]) for s in servers if s.get("identity"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise IdentityError(f"{path}: cannot read the server identity ({err})") from err
    if not names:
        raise IdentityError(f"{path}: no server identity in 'servers'")
    return names


def certificate_refusal(cert: x509.Certificate, server_names: Iterable[str] = ()) -> str | None:
    """``None`` if ``cert`` can be a consortium site's certificate, else why not (module docstring)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            return "a CA certificate, not a site's"
    except x509.ExtensionNotFound:
        pass
    roles = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.UNSTRUCTURED_NAME)]
    for role in roles:
        if role == "server":
            return "a server certificate (NVFlare role 'server'), not a site's"
        if role in ADMIN_ROLES:
            return f"an admin certificate (NVFlare role {role!r}), not a site's"
        if role != SITE_ROLE:
            return f"a certificate with NVFlare role {role!r}, not a site's"
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if set(names) & set(server_names):
        return f"the server's certificate ({names[0]!r} is the server identity in the site kit), not a site's"
    return None


class CertificateVerifier:
    """Checks ``(site, certificate, data, signature)`` against one root CA.

    :meth:`check` returns ``None`` when everything holds, else the reason (for the log). With
    ``require_site=True`` (the default) only a site's certificate passes (:func:`certificate_refusal`:
    no CA, admin or server certificate; ``server_names`` are the server identities, see
    :func:`server_identities`).
    """

    def __init__(self, root_ca_pem: bytes, *, server_names: Iterable[str] = (), require_site: bool = True):
        self.root = x509.load_pem_x509_certificate(root_ca_pem)
        self.server_names = frozenset(server_names)
        self.require_site = require_site

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
        if self.require_site and (refusal := certificate_refusal(cert, self.server_names)):
            return refusal
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

"""What a provisioned NVFlare kit is and whether its certificates can be trusted.

A kit is one participant's folder written by ``ai4hi provision`` (``<ws>/<project>/prod_NN/<name>``):
``startup/`` holds the mTLS material and NVFlare's start scripts, ``local/`` the site-local
configuration, and for sites ``ai4hi/`` the site's own policy and state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ai4hi_sdk.errors import UserError

KitKind = Literal["server", "site", "admin"]
_CONFIG = {"server": "fed_server.json", "site": "fed_client.json", "admin": "fed_admin.json"}
_CERT = {"server": "server", "site": "client", "admin": "client"}
DAEMON_PID_FILE = "daemon_pid.fl"
PROCESS_PID_FILE = "pid.fl"


@dataclass(frozen=True)
class Check:
    """One line of a report: what was checked, whether it passed, and why (or why not).

    ``level`` is ``ok``, ``warn`` (reported, does not make the site unready) or ``fail``.
    """

    name: str
    level: Literal["ok", "warn", "fail"]
    detail: str

    @property
    def ok(self) -> bool:
        return self.level != "fail"


@dataclass(frozen=True)
class Kit:
    """A provisioned participant kit."""

    path: Path
    kind: KitKind

    @property
    def startup(self) -> Path:
        return self.path / "startup"

    @property
    def config(self) -> dict[str, Any]:
        """The kit's NVFlare startup configuration (``fed_server.json`` / ``fed_client.json`` / ``fed_admin.json``)."""
        return json.loads((self.startup / _CONFIG[self.kind]).read_text())

    @property
    def cert_file(self) -> Path:
        return self.startup / f"{_CERT[self.kind]}.crt"

    @property
    def key_file(self) -> Path:
        return self.startup / f"{_CERT[self.kind]}.key"

    @property
    def root_ca_file(self) -> Path:
        return self.startup / "rootCA.pem"

    @property
    def name(self) -> str:
        """Participant name: the server's host name, the site name or the admin's e-mail."""
        config = self.config
        if self.kind == "site":
            return str(config["client"].get("fqsn") or self.path.name)
        if self.kind == "admin":
            return str(config["admin"]["username"])
        return str(config["servers"][0].get("admin_server") or self.path.name)

    @property
    def server_target(self) -> tuple[str, int]:
        """(host, port) of the federated-learning service this kit talks to (or serves)."""
        if self.kind == "admin":
            admin = self.config["admin"]
            return str(admin["host"]), int(admin["port"])
        host, port = self.config["servers"][0]["service"]["target"].rsplit(":", 1)
        return host, int(port)

    @property
    def admin_port(self) -> int | None:
        """The server's admin port (server and admin kits)."""
        if self.kind == "server":
            return int(self.config["servers"][0]["admin_port"])
        if self.kind == "admin":
            return int(self.config["admin"]["port"])
        return None

    @property
    def resources(self) -> dict[str, Any]:
        """``local/resources.json`` (or NVFlare's default when the site has not written one)."""
        for name in ("resources.json", "resources.json.default"):
            path = self.path / "local" / name
            if path.is_file():
                return json.loads(path.read_text())
        return {}

    @property
    def requested_gpus(self) -> int:
        """GPUs NVFlare's resource manager will expect at start (``num_of_gpus``)."""
        for component in self.resources.get("components", []):
            if component.get("id") == "resource_manager":
                return int(component.get("args", {}).get("num_of_gpus", 0) or 0)
        return 0

    def pid_file(self, name: str) -> Path:
        return self.path / name


def load_kit(path: str | Path, expect: KitKind | tuple[KitKind, ...] | None = None) -> Kit:
    """Recognise the kit at ``path`` (its ``startup/`` folder says what it is).

    Raises :class:`UserError` naming the path when it is not a kit, or not of the ``expect``-ed kind.
    """
    path = Path(path).resolve()
    if not (path / "startup").is_dir():
        raise UserError(f"'{path}' is not a provisioned kit (no startup/ folder); "
                        "give the participant's folder written by 'ai4hi provision'")
    kinds = [kind for kind, config in _CONFIG.items() if (path / "startup" / config).is_file()]
    if len(kinds) != 1:
        raise UserError(f"'{path}/startup' holds none (or several) of {sorted(_CONFIG.values())}: not a kit")
    kit = Kit(path, kinds[0])  # type: ignore[arg-type]
    wanted = (expect,) if isinstance(expect, str) else expect
    if wanted and kit.kind not in wanted:
        article = "an" if wanted[0] == "admin" else "a"
        raise UserError(f"'{path}' is {'an' if kit.kind == 'admin' else 'a'} {kit.kind} kit; this command needs "
                        f"{article} {' or '.join(wanted)} kit")
    return kit


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` issued ``cert``: its subject is ``cert``'s issuer and its key signed it
    (cryptography's check, for RSA, EC and EdDSA keys alike)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _validity(cert: x509.Certificate, now: datetime, what: str) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d} UTC; re-provision the consortium"
    return None


def check_certificates(kit: Kit, now: datetime | None = None) -> list[Check]:
    """Kit integrity: the root CA is a valid self-signed CA, the participant certificate is signed
    by it, names this participant, is within its validity period, and matches the private key."""
    now = now or datetime.now(timezone.utc)
    checks: list[Check] = []
    try:
        root = x509.load_pem_x509_certificate(kit.root_ca_file.read_bytes())
        cert = x509.load_pem_x509_certificate(kit.cert_file.read_bytes())
    except (OSError, ValueError) as err:
        return [Check("certificates", "fail", f"cannot read the kit's certificates: {err}")]
    if _signed_by(root, root):
        problem = _validity(root, now, "the consortium root CA")
        checks.append(Check("root CA", "fail" if problem else "ok",
                            problem or f"self-signed, valid until {root.not_valid_after_utc:%Y-%m-%d}"))
    else:
        checks.append(Check("root CA", "fail", "rootCA.pem is not a valid self-signed certificate"))
    signed = _signed_by(cert, root)
    checks.append(Check("certificate signature", "ok" if signed else "fail",
                        f"{kit.cert_file.name} is signed by the consortium root CA" if signed else
                        f"{kit.cert_file.name} is NOT signed by this kit's rootCA.pem (tampered or from "
                        "another consortium); ask the lead for a fresh kit"))
    problem = _validity(cert, now, kit.cert_file.name)
    checks.append(Check("certificate validity", "fail" if problem else "ok",
                        problem or f"valid until {cert.not_valid_after_utc:%Y-%m-%d}"))
    names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    expected = kit.name
    checks.append(Check("certificate name", "ok" if expected in names else "fail",
                        f"issued to '{expected}'" if expected in names else
                        f"issued to {names}, but this kit is '{expected}'"))
    try:
        key = serialization.load_pem_private_key(kit.key_file.read_bytes(), password=None)
        pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        matches = pub == cert.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        checks.append(Check("private key", "ok" if matches else "fail",
                            "matches the certificate" if matches else
                            f"{kit.key_file.name} does not belong to {kit.cert_file.name}"))
    except (OSError, ValueError, TypeError) as err:
        checks.append(Check("private key", "fail", f"cannot read {kit.key_file.name}: {err}"))
    return checks

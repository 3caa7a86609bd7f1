"""A real consortium provisioned with ``ai4hi provision`` (NVFlare's ``nvflare provision``): the
certificates and keys of its sites, its server and its admins, for tests that play the server."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ai4hi_sdk.privacy.secagg.protocol.identity import (SERVER_CERT, SERVER_KEY, SiteIdentity,
                                                        server_identities)

SITES = ["hospital-1", "hospital-2", "hospital-3", "hospital-4", "hospital-5"]
SERVER = "localhost"
LEAD = "lead@consortium.example.org"


@dataclass(frozen=True)
class Kits:
    """Where the provisioned kits lie and the identities they hold."""

    sites: dict[str, Path]  # site -> its kit's startup folder
    server: Path
    admins: dict[str, Path]  # e-mail -> startup folder

    def site(self, name: str) -> SiteIdentity:
        return SiteIdentity.load(self.sites[name], name)

    def server_identity(self) -> SiteIdentity:
        """The server's own key and certificate, used *as if* it were a participant."""
        return SiteIdentity.load(self.server, SERVER, key_file=SERVER_KEY, cert_file=SERVER_CERT)

    def admin(self, email: str) -> SiteIdentity:
        return SiteIdentity.load(self.admins[email], email)

    def server_names(self, site: str) -> frozenset[str]:
        return server_identities(self.sites[site])

    @property
    def root_ca(self) -> bytes:
        return (self.server / "rootCA.pem").read_bytes()


@pytest.fixture(scope="session")
def kits(tmp_path_factory) -> Kits:
    """Five hospitals, the server ``localhost``, the lead and one admin per hospital (~2 s)."""
    from ai4hi_sdk.config.consortium import load_consortium
    from ai4hi_sdk.provision.provision import provision
    from tests.deploy.conftest import write_consortium

    out = tmp_path_factory.mktemp("secagg-kits")
    # the ports are only written into the kits; nothing binds them
    spec = write_consortium(out / "consortium.yaml", out / "data", sites=len(SITES), ports=(18102, 18103))
    info = provision(load_consortium(spec), out / "ws")
    return Kits(sites={s: Path(info["sites"][s]["kit"]) / "startup" for s in SITES},
                server=Path(info["server"]) / "startup",
                admins={e: Path(p) / "startup" for e, p in info["admins"].items()})

"""Typed schema of a consortium file (``site_templates/consortium.example.yaml``).

A lead writes it: the server, the sites (organisation, GPUs, data root, admin), the people and
their roles, and the default privacy policy every site starts from. Mistakes are reported with
the file, the field and the reason (duplicate or invalid names, ports, a site without an admin...).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ai4hi_sdk.config.loader import StrictModel, load_yaml_model
from ai4hi_sdk.config.site_policy import SitePrivacyPolicy

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_ORG = re.compile(r"^[A-Za-z0-9_]+$")  # NVFlare's rule for organisation names
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class ServerSpec(StrictModel):
    """The aggregation server. ``host: localhost`` binds 127.0.0.1 (tests, demos)."""

    host: str
    fed_learn_port: int = Field(8002, ge=1024, le=65535)
    admin_port: int = Field(8003, ge=1024, le=65535)
    org: str = "consortium"

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not _HOST.match(value):
            raise ValueError("must be a host name (letters, digits, '.', '-')")
        return value

    _org = field_validator("org")(classmethod(lambda cls, v: _check_org(v)))

    @model_validator(mode="after")
    def _distinct_ports(self) -> "ServerSpec":
        if self.fed_learn_port == self.admin_port:
            raise ValueError("fed_learn_port and admin_port must differ")
        return self


def _check_org(value: str) -> str:
    if not _ORG.match(value):
        raise ValueError("organisation names may only use letters, digits and '_' (NVFlare's rule)")
    return value


class SiteSpec(StrictModel):
    """One hospital site."""

    name: str
    org: str
    gpus: int = Field(0, ge=0, le=64)
    data_root: str = Field(description="the site's DICOM folder, as seen on the site's machine")
    admin: str = Field(description="e-mail of the site admin (must be listed under people)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-63 lowercase letters, digits or '-', starting with a letter or digit")
        return value

    _org = field_validator("org")(classmethod(lambda cls, v: _check_org(v)))


class PersonSpec(StrictModel):
    email: str
    org: str
    role: Literal["lead", "site_admin", "project_admin", "member"]

    _org = field_validator("org")(classmethod(lambda cls, v: _check_org(v)))

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError("must be an e-mail address")
        return value


class ConsortiumSpec(StrictModel):
    """A consortium: server, sites, people, default site privacy policy."""

    name: str
    server: ServerSpec
    sites: list[SiteSpec] = Field(min_length=1)
    people: list[PersonSpec] = Field(min_length=1)
    default_privacy_policy: SitePrivacyPolicy

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-63 lowercase letters, digits or '-'")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "ConsortiumSpec":
        problems = []
        names = [s.name for s in self.sites]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"duplicate site names {duplicates}")
        if self.server.host in names:
            problems.append(f"site name '{self.server.host}' is also the server's host name")
        emails = [p.email for p in self.people]
        dup_people = sorted({e for e in emails if emails.count(e) > 1})
        if dup_people:
            problems.append(f"duplicate people {dup_people}")
        by_email = {p.email: p for p in self.people}
        for site in self.sites:
            person = by_email.get(site.admin)
            if person is None:
                problems.append(f"site '{site.name}': admin '{site.admin}' is not listed under people")
            elif person.role not in ("site_admin", "project_admin"):
                problems.append(f"site '{site.name}': '{site.admin}' has role '{person.role}', not site_admin")
        if not any(p.role == "lead" for p in self.people):
            problems.append("no person has the role 'lead'")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_consortium(path: str | Path) -> ConsortiumSpec:
    """Read and validate a consortium YAML file (ConfigError names file, field and reason)."""
    return load_yaml_model(path, ConsortiumSpec)

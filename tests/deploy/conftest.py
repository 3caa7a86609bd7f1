"""Shared helpers for deployment tests: a consortium on 127.0.0.1 with ports free at test time."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def write_consortium(path: Path, data_root: Path, sites: int = 2, gpus: dict[str, int] | None = None,
                     ports: tuple[int, int] | None = None) -> Path:
    """A consortium file: server ``localhost`` (binds 127.0.0.1), ``hospital-1..N`` reading
    ``data_root/<site>``, a lead and one admin per site."""
    fed, admin = ports or free_ports(2)
    names = [f"hospital-{i + 1}" for i in range(sites)]
    consortium = {
        "name": "e2e-consortium",
        "server": {"host": "localhost", "fed_learn_port": fed, "admin_port": admin, "org": "consortium"},
        "sites": [{"name": n, "org": n.replace("-", "_"), "gpus": (gpus or {}).get(n, 0),
                   "data_root": str(data_root / n), "admin": f"it@{n}.example.org"} for n in names],
        "people": [{"email": "lead@consortium.example.org", "org": "consortium", "role": "lead"}]
                  + [{"email": f"it@{n}.example.org", "org": n.replace("-", "_"), "role": "site_admin"}
                     for n in names],
        "default_privacy_policy": {"max_epsilon_per_dataset": 10.0, "delta": 1e-5, "min_noise_multiplier": 0.5,
                                   "require_dp": True, "require_secure_aggregation": False},
    }
    path.write_text(yaml.safe_dump(consortium, sort_keys=False))
    return path


def provision_example(out: Path, data_root: Path | None = None) -> dict:
    """Provision a 2-hospital consortium (hospital-2 asks for 1 GPU) with the real ``nvflare provision``."""
    from ai4hi_sdk.config.consortium import load_consortium
    from ai4hi_sdk.provision.provision import provision

    out.mkdir(parents=True, exist_ok=True)
    data_root = data_root or out / "data"
    path = write_consortium(out / "consortium.yaml", data_root, gpus={"hospital-2": 1})
    return provision(load_consortium(path), out / "ws")

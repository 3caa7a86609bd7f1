"""Shared helpers for deployment tests: a consortium on 127.0.0.1 with ports free at test time."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

REPO = Path(__file__).resolve().parents[2]
LEAD = "lead@consortium.example.org"


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
        # min_count 3: the test sites have a handful of validation studies (a real site keeps k = 10)
        "default_privacy_policy": {"max_epsilon_per_dataset": 10.0, "delta": 1e-5, "min_noise_multiplier": 0.5,
                                   "require_dp": True, "require_secure_aggregation": False, "min_count": 3},
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


def tmp_nvflare_state() -> list[str] | None:
    """Everything under ``/tmp/nvflare`` (None if absent): a deployment must not add to it."""
    root = Path("/tmp/nvflare")
    return sorted(str(p) for p in root.rglob("*")) if root.exists() else None


def small_spec(name: str, dp: bool, privacy: dict | None = None):
    """The demo job, shrunk to run in seconds on 2 cores (2 rounds, 32 px, a tiny DenseNet).
    ``privacy`` is added to the job's privacy section (DP-SGD when ``dp``)."""
    from ai4hi_sdk.config.job_spec import load_job_spec

    spec = load_job_spec(REPO / "jobs" / "cxr_classification.yaml")
    privacy = {**({"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}} if dp else {}), **(privacy or {})}
    return spec.model_validate({
        **spec.model_dump(mode="json"), "name": name,
        "model": {"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1,
                  "norm": ["group", {"num_groups": 2}]},
        "train": {**spec.train.model_dump(), "rounds": 2, "local_epochs": 1, "batch_size": 8,
                  "max_steps_per_round": 3, "threads": 1},
        "data": {"image_size": 32}, "privacy": privacy})


@contextmanager
def running_consortium(root: Path, n_sites: int, studies_per_site: int = 40) -> Iterator[dict]:
    """Synthesise data, provision ``hospital-1..n_sites`` on 127.0.0.1 (free ports), start the
    server and every site from their kits, wait until all sites are connected; stop every kit on
    exit, whatever happened. Yields ``root, server, sites, admin, kits, before_tmp, startup_s, jobs``."""
    from ai4hi_sdk.config.consortium import load_consortium
    from ai4hi_sdk.data.synth import synth_consortium
    from ai4hi_sdk.deploy.admin import AdminSession
    from ai4hi_sdk.deploy.kit import load_kit
    from ai4hi_sdk.deploy.processes import start_kit, stop_kit
    from ai4hi_sdk.provision.provision import provision
    from ai4hi_sdk.trainers.site_trainer import TORCH_THREADS_ENV

    before_tmp = tmp_nvflare_state()
    names = [f"hospital-{i + 1}" for i in range(n_sites)]
    synth_consortium(root / "data", sites=n_sites, studies_per_site=studies_per_site, seed=3)
    kits = provision(load_consortium(write_consortium(root / "consortium.yaml", root / "data", sites=n_sites)),
                     root / "ws")
    server = load_kit(kits["server"], expect="server")
    sites = {s: load_kit(kits["sites"][s]["kit"], expect="site") for s in names}
    admin = Path(kits["admins"][LEAD])
    all_kits = [server, *sites.values()]
    env = {TORCH_THREADS_ENV: "1"}
    try:
        started = time.monotonic()
        start_kit(server, timeout_s=120, extra_env=env)
        with ThreadPoolExecutor(len(sites)) as pool:  # each site's supervisor waits 5 s before starting
            list(pool.map(lambda k: start_kit(k, timeout_s=120, extra_env=env), sites.values()))
        # NVFlare's scheduler backs off for minutes if a job's site is missing: wait for all first
        with AdminSession(admin, timeout_s=60) as session:
            session.wait_for_sites(names, timeout_s=120)
        yield {"root": root, "server": server, "sites": sites, "admin": admin, "kits": all_kits,
               "before_tmp": before_tmp, "startup_s": time.monotonic() - started, "jobs": {}}
    finally:
        for kit in all_kits:
            stop_kit(kit)


def stop_and_check_nothing_left(deployment: dict) -> None:
    """Stop every kit of a ``running_consortium`` and check that no process of it, no pid file, no
    open port and no new NVFlare temp state is left behind."""
    import psutil

    from ai4hi_sdk.deploy.processes import kit_processes, stop_kit

    for kit in deployment["kits"]:
        stop_kit(kit)
    for kit in deployment["kits"]:
        assert kit_processes(kit) == []
        assert not (kit.path / "pid.fl").exists() and not (kit.path / "daemon_pid.fl").exists()
    root = str(deployment["root"])
    strays = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(root in part for part in proc.info["cmdline"] or []):
                strays.append(proc.info)
        except psutil.Error:
            continue
    assert strays == []
    for port in (deployment["server"].server_target[1], deployment["server"].admin_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert tmp_nvflare_state() == deployment["before_tmp"]

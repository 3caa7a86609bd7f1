"""A provisioned server kit starts once, refuses a second start, and stops without leftovers
(its processes gone, its port closed)."""

from __future__ import annotations

import socket

import psutil
import pytest

from ai4hi_sdk.deploy.kit import load_kit
from ai4hi_sdk.deploy.processes import is_running, kit_processes, start_kit, stop_kit
from ai4hi_sdk.errors import UserError
from tests.deploy.conftest import provision_example


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    return provision_example(tmp_path_factory.mktemp("proc"))


@pytest.mark.deploy
def test_server_starts_once_and_stops_without_leftovers(kits):
    server = load_kit(kits["server"])
    try:
        pid = start_kit(server, timeout_s=120)
        assert is_running(server) and psutil.pid_exists(pid)
        with pytest.raises(UserError, match="already running"):
            start_kit(server)
        procs = kit_processes(server)
        assert pid in {p.pid for p in procs}
    finally:
        report = stop_kit(server)
    assert pid in report.terminated + report.killed
    assert kit_processes(server) == [] and not is_running(server)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.server_target[1])) != 0

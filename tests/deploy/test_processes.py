"""Starting and stopping kits: only the kit's own processes are touched, none is left behind (the
checks that start no process; a real server start and stop: ``tests/e2e/deploy/test_processes_e2e.py``)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import psutil
import pytest

from ai4hi_sdk.deploy.kit import load_kit
from ai4hi_sdk.deploy.processes import is_running, kit_env, kit_processes, start_kit, stop_kit
from ai4hi_sdk.errors import UserError
from tests.deploy.conftest import provision_example


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    return provision_example(tmp_path_factory.mktemp("proc"))


def test_stale_pid_files_never_kill_an_unrelated_process(kits):
    """A pid file left by a crash may name a PID now used by another program: stop must leave it alone."""
    kit = load_kit(kits["sites"]["hospital-1"]["kit"])
    (kit.path / "daemon_pid.fl").write_text(str(os.getpid()))
    (kit.path / "pid.fl").write_text(str(os.getppid()))
    assert kit_processes(kit) == []
    report = stop_kit(kit)
    assert report.terminated == [] and report.killed == []
    assert psutil.pid_exists(os.getpid())
    assert not (kit.path / "daemon_pid.fl").exists() and not (kit.path / "pid.fl").exists()


def test_kit_environment_uses_this_interpreter_and_keeps_temp_files_in_the_kit(kits):
    kit = load_kit(kits["server"])
    env = kit_env(kit)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["TMPDIR"].startswith(str(kit.path)) and "/tmp/nvflare" not in str(env)


def test_admin_kits_cannot_be_started(kits):
    with pytest.raises(UserError, match="nothing to start"):
        start_kit(load_kit(kits["admins"]["lead@consortium.example.org"]))


def test_server_refuses_to_start_on_a_busy_port(kits):
    server = load_kit(kits["server"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", server.server_target[1]))
        sock.listen(1)
        with pytest.raises(UserError, match="already in use"):
            start_kit(server)
    assert not is_running(server)

"""Start and stop a kit's NVFlare processes (server or site) without prompts or leftovers.

``start`` runs the kit's own ``startup/start.sh`` (NVFlare's supervisor loop ``sub_start.sh``,
which writes ``daemon_pid.fl`` and, once the NVFlare process runs, ``pid.fl``) detached in its own
session, with:

* the current interpreter's ``bin/`` first on ``PATH``, because NVFlare's scripts and job
  sub-processes call a bare ``python3`` and must use the SDK's environment;
* temp files, caches and NVFlare's scratch space inside the kit (``TMPDIR`` etc.), never
  ``/tmp/nvflare``;
* ``AI4HI_KIT=<kit>`` in the environment, so ``stop`` can find every process it started for this
  kit even if NVFlare re-parented one.

``stop`` terminates exactly those processes (the pid files' trees plus any process carrying this
kit's marker), waits, kills what is left, and removes the pid files.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ai4hi_sdk.deploy.kit import DAEMON_PID_FILE, PROCESS_PID_FILE, Kit
from ai4hi_sdk.errors import UserError

KIT_MARKER_ENV = "AI4HI_KIT"
LOG_FILE = "ai4hi_site.log"
_FLAG_FILES = ("shutdown.fl", "restart.fl")


@dataclass
class StopReport:
    """What ``stop`` did: the PIDs it ended and those it had to kill."""

    terminated: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)


def kit_env(kit: Kit, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a kit's processes (see the module docstring)."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    tmp = kit.path / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(
        TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp),
        TORCHINDUCTOR_CACHE_DIR=str(kit.path / "cache" / "torchinductor"),
        MPLCONFIGDIR=str(kit.path / "cache" / "matplotlib"),
        PYTHONUNBUFFERED="1",
    )
    env[KIT_MARKER_ENV] = str(kit.path)
    env.update(extra or {})
    return env


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _names_path(part: str, path: Path) -> bool:
    """Whether a command-line argument is ``path`` or a path inside it (also as ``--opt=PATH``):
    compared component by component, so ``.../hospital-1`` does not match ``.../hospital-10``."""
    root = str(path).rstrip(os.sep)
    for value in (part, part.split("=", 1)[1] if "=" in part else None):
        if value is not None and (value.rstrip(os.sep) == root or value.startswith(root + os.sep)):
            return True
    return False


def _belongs_to(proc: psutil.Process, kit: Kit) -> bool:
    """Whether ``proc`` was started for ``kit`` (guards against a PID reused by another program,
    including another kit whose path merely starts the same)."""
    try:
        if proc.environ().get(KIT_MARKER_ENV) == str(kit.path):
            return True
        return any(_names_path(part, kit.path) for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def kit_processes(kit: Kit) -> list[psutil.Process]:
    """Every live process of ``kit``: the pid files' process trees and processes carrying the kit's marker."""
    found: dict[int, psutil.Process] = {}
    for name in (DAEMON_PID_FILE, PROCESS_PID_FILE):
        pid = _read_pid(kit.pid_file(name))
        if pid is None:
            continue
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        if not _belongs_to(proc, kit):
            continue
        found[pid] = proc
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    me = os.getuid()
    for proc in psutil.process_iter(["pid", "uids"]):
        if proc.pid in found or proc.info["uids"] is None or proc.info["uids"].real != me:
            continue
        try:
            if proc.environ().get(KIT_MARKER_ENV) == str(kit.path):
                found[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return [p for p in found.values() if _alive(p.pid)]


def is_running(kit: Kit) -> bool:
    """Whether the kit's supervisor or NVFlare process is alive."""
    return any(_alive(_read_pid(kit.pid_file(n))) for n in (DAEMON_PID_FILE, PROCESS_PID_FILE))


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _listens_on(pid: int, ports: set[int]) -> bool:
    """Whether process ``pid`` itself listens on all ``ports`` (not some other program)."""
    try:
        listening = {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return ports <= listening


def _remove_pid_files(kit: Kit) -> None:
    for name in (DAEMON_PID_FILE, PROCESS_PID_FILE, *_FLAG_FILES):
        kit.pid_file(name).unlink(missing_ok=True)


def start_kit(kit: Kit, timeout_s: float = 60, extra_env: dict[str, str] | None = None) -> int:
    """Start the kit's NVFlare process detached; return the NVFlare process's PID once it runs
    (for a server, once its ports accept connections).

    Raises :class:`UserError` if the kit is already running or does not come up within ``timeout_s``
    (the processes started are then stopped again and the log is named).
    """
    if kit.kind == "admin":
        raise UserError(f"'{kit.path}' is an admin kit: there is nothing to start (use it with 'ai4hi job ...')")
    if is_running(kit):
        pid = _read_pid(kit.pid_file(DAEMON_PID_FILE))
        raise UserError(f"{kit.kind} '{kit.name}' is already running (supervisor pid {pid}); "
                        f"stop it first with 'ai4hi site stop {kit.path}'")
    ports = {kit.server_target[1], kit.admin_port or 0} if kit.kind == "server" else set()
    busy = sorted(p for p in ports if _port_open("127.0.0.1", p))
    if busy:
        raise UserError(f"port(s) {busy} of server '{kit.name}' are already in use by another program")
    _remove_pid_files(kit)  # stale files would make sub_start.sh refuse or stop at once
    log_path = kit.path / LOG_FILE
    with open(log_path, "ab") as log:
        # start.sh forks sub_start.sh and returns; the new session keeps the site alive after this
        # command exits and away from the terminal's signals
        subprocess.run(["bash", str(kit.startup / "start.sh")], cwd=str(kit.path), stdin=subprocess.DEVNULL,
                       stdout=log, stderr=subprocess.STDOUT, env=kit_env(kit, extra_env),
                       start_new_session=True, timeout=30, check=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = _read_pid(kit.pid_file(PROCESS_PID_FILE))
        if _alive(pid):
            if not ports or _listens_on(int(pid), ports):  # type: ignore[arg-type]
                return int(pid)  # type: ignore[arg-type]
        elif pid is not None and not _alive(_read_pid(kit.pid_file(DAEMON_PID_FILE))):
            break  # the supervisor gave up
        time.sleep(0.5)
    stop_kit(kit)
    raise UserError(f"{kit.kind} '{kit.name}' did not start within {timeout_s:.0f} s; see {log_path} "
                    f"and {kit.path / 'log.txt'}")


def stop_kit(kit: Kit, grace_s: float = 15) -> StopReport:
    """Stop every process of ``kit`` (SIGTERM, then SIGKILL after ``grace_s``) and remove its pid
    files. Stopping a kit that is not running is not an error."""
    report = StopReport()
    procs = kit_processes(kit)
    # the supervisor first: otherwise it restarts the NVFlare process it sees die
    daemon_pid = _read_pid(kit.pid_file(DAEMON_PID_FILE))
    procs.sort(key=lambda p: p.pid != daemon_pid)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    gone, alive = psutil.wait_procs(procs, timeout=grace_s)
    report.terminated = sorted(p.pid for p in gone)
    # a process may have spawned children while we waited: take them too
    leftovers = {p.pid: p for p in alive}
    leftovers.update({p.pid: p for p in kit_processes(kit)})
    for proc in leftovers.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    _, still = psutil.wait_procs(list(leftovers.values()), timeout=10)
    report.killed = sorted(leftovers)
    if still:
        raise UserError(f"could not stop processes {sorted(p.pid for p in still)} of '{kit.path}'")
    _remove_pid_files(kit)
    return report

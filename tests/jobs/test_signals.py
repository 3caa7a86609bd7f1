"""SIGTERM / SIGHUP to `ai4hi job simulate` and `ai4hi continuous run` stop the whole simulator
process tree and exit non-zero.

The real CLI runs in a child process; only the simulator binary is replaced by a stand-in that
builds the kind of tree NVFlare's does: a process in its own session (as the simulator is started),
a child in yet another session (NVFlare starts each site with setsid) and an orphan re-parented away
from the tree (found only by the run's environment marker). The real simulator is signalled in
tests/e2e/jobs/test_signals_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from ai4hi_sdk.data.synth import synth_site

REPO = Path(__file__).resolve().parents[2]

FAKE_TREE = textwrap.dedent("""
    import os, subprocess, sys, time
    out = sys.argv[1]
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    site = subprocess.Popen(sleeper, start_new_session=True)           # NVFlare: setsid per site
    launcher = subprocess.Popen([sys.executable, "-c",                  # double fork: an orphan
        "import subprocess, sys, os; p = subprocess.Popen(sys.argv[2:], start_new_session=True); "
        "open(sys.argv[1], 'w').write(str(p.pid)); os._exit(0)", out + ".orphan", *sleeper])
    launcher.wait()
    with open(out + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {site.pid} {open(out + '.orphan').read()}")
    os.replace(out + ".tmp", out)
    time.sleep(600)
""")

DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import ai4hi_sdk.jobs.simulate as sim

    pids_file, fake_tree, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

    def fake_simulator(job_dir, sim_workspace, sites, log_path, env, timeout_s, on_poll=None):
        return sim.run_process_tree([sys.executable, "-c", fake_tree, pids_file], Path(log_path), env, timeout_s,
                                    cwd=Path(sim_workspace).parent, on_poll=on_poll)

    sim.run_simulator = fake_simulator
    from ai4hi_sdk.cli.main import main
    sys.exit(main(argv))
""")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_and_check(tmp_path: Path, argv: list[str], sig: signal.Signals) -> None:
    pids_file = tmp_path / "tree.pids"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(tmp_path / "cli.log", "w") as log:
        cli = subprocess.Popen([sys.executable, "-c", DRIVER, str(pids_file), FAKE_TREE, *argv], stdout=log,
                               stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not pids_file.exists():
            assert cli.poll() is None, (tmp_path / "cli.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the stand-in simulator never started"
            time.sleep(0.2)
        tree = [int(p) for p in pids_file.read_text().split()]
        assert all(_alive(p) for p in tree)
        cli.send_signal(sig)
        code = cli.wait(timeout=60)
        assert code == 128 + sig, (code, (tmp_path / "cli.log").read_text()[-3000:])
        left = [p for p in tree if _alive(p)]
        assert not left, f"processes left behind after {sig.name}: {left}"
        assert f"terminated by {sig.name}" in (tmp_path / "cli.log").read_text()
    finally:
        for pid in [cli.pid, *tree]:  # only what this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sighup_to_job_simulate_stops_the_tree(tmp_path):
    for i in range(2):
        synth_site(tmp_path / "data" / f"hospital-{i + 1}", site_index=i, n_studies=8, seed=0)
    spec = tmp_path / "job.yaml"
    spec.write_text("name: sig\ntrain: {rounds: 1}\nmodel: {init_features: 4, growth_rate: 2, block_config: [1], "
                    "bn_size: 1}\ndata: {image_size: 16}\n")
    _signal_and_check(tmp_path, ["job", "simulate", str(spec), "--data-root", str(tmp_path / "data"),
                                 "--workspace", str(tmp_path / "ws")], signal.SIGHUP)
    assert not (tmp_path / "ws" / "result" / "global_model.pt").exists()


def test_sigterm_to_continuous_run_stops_the_tree(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text(json.dumps({"job": str(REPO / "jobs" / "cxr_classification.yaml"),
                                "policy": str(REPO / "jobs" / "update_policy.yaml"),
                                "data": {"sites": 3, "studies_per_site": 8}}))
    _signal_and_check(tmp_path, ["continuous", "run", str(loop), "--data-root", str(tmp_path / "data"),
                                 "--workspace", str(tmp_path / "ws")], signal.SIGTERM)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_raise_only_inside_the_block(sig):
    from ai4hi_sdk.jobs.signals import Terminated, stop_signals_raise

    before = signal.getsignal(sig)
    with pytest.raises(Terminated) as stop, stop_signals_raise(override=True):
        os.kill(os.getpid(), sig)
        time.sleep(1)  # the handler runs at the next bytecode boundary
    assert stop.value.signum == sig and signal.getsignal(sig) == before

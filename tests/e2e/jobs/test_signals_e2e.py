"""End-to-end: SIGTERM to a real `ai4hi job simulate` mid-run (after every site has booked its first
DP round) leaves no process of the simulator tree and no privacy-ledger entry after the signal.

(The issue's failure: the orphaned simulator went on to run the job and spend budget for 3 rounds.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ai4hi_sdk.data.synth import synth_site

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
SITES = ("hospital-1", "hospital-2")


def _entries(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def _run_processes(ws: Path) -> list[psutil.Process]:
    """This user's processes started for the run (the simulator gives each one TMPDIR=WS/tmp)."""
    found = []
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"].real == os.getuid() and proc.environ().get("TMPDIR") == str(ws / "tmp") \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_sigterm_mid_run_leaves_no_process_and_no_spend(tmp_path):
    for i, site in enumerate(SITES):
        synth_site(tmp_path / "data" / site, site_index=i, n_studies=24, seed=1)
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: sigterm\n"
        "model: {init_features: 4, growth_rate: 2, block_config: [1], bn_size: 1}\n"
        "train: {rounds: 30, local_epochs: 1, batch_size: 8, lr: 0.05, threads: 1, seed: 0}\n"
        "data: {image_size: 16}\n"
        "privacy: {dp_sgd: {target_epsilon: 8.0, max_grad_norm: 1.0}}\n")
    ws = tmp_path / "ws"
    ledgers = [ws / "sites" / site / "ai4hi" / "privacy_ledger.jsonl" for site in SITES]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log_path = tmp_path / "cli.log"
    with open(log_path, "w") as log:
        cli = subprocess.Popen([sys.executable, "-m", "ai4hi_sdk.cli.main", "job", "simulate", str(spec),
                                "--data-root", str(tmp_path / "data"), "--workspace", str(ws), "--timeout", "400"],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not all(_entries(ledger) for ledger in ledgers):  # every site has booked a round: mid-run
            assert cli.poll() is None, log_path.read_text()[-3000:] + (ws / "simulate.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no round was booked in time"
            time.sleep(0.2)
        tree = psutil.Process(cli.pid).children(recursive=True) + _run_processes(ws)
        at_signal = [_entries(ledger) for ledger in ledgers]
        assert len({p.pid for p in tree}) >= 3  # simulator + one process per site at least
        cli.send_signal(signal.SIGTERM)
        code = cli.wait(timeout=60)
        assert code == 128 + signal.SIGTERM, log_path.read_text()[-3000:]
        time.sleep(15)  # long enough for an orphan to reach its next round
        survivors = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not survivors and not _run_processes(ws), survivors
        assert [_entries(ledger) for ledger in ledgers] == at_signal
    finally:
        from ai4hi_sdk.jobs.simulate import kill_process_tree

        if cli.poll() is None:
            kill_process_tree(cli.pid)
        for proc in _run_processes(ws):  # only the run's own processes
            kill_process_tree(proc.pid)

"""Point 10 of issue 12: each mistake is a one-line error with exit code 2 and loses nothing
(corrupt history.json, bad site.yaml, export targets, --sites/--timeout and the secure-aggregation
site count in simulate are in test_report_integrity.py, test_site_check_truth.py and
test_no_data_loss.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.config.job_spec import load_job_spec
from ai4hi_sdk.deploy.kit import load_kit
from ai4hi_sdk.deploy.processes import DAEMON_PID_FILE, kit_processes, stop_kit
from ai4hi_sdk.errors import ConfigError, UserError
from ai4hi_sdk.jobs.simulate import check_secure_aggregation
from tests.deploy.conftest import provision_example

REPO = Path(__file__).resolve().parents[2]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_non_utf8_yaml_is_a_one_line_error(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_job_spec(spec)
    assert main(["job", "export", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "not UTF-8" in _one_line_error(capsys) and not (tmp_path / "out").exists()
    loop = tmp_path / "loop.yaml"
    loop.write_bytes(b"name: \xff\xfe\n")
    assert main(["continuous", "run", str(loop), "--data-root", str(tmp_path / "d"),
                 "--workspace", str(tmp_path / "w")]) == 2
    assert "loop.yaml" in _one_line_error(capsys) and not (tmp_path / "w").exists()


@pytest.mark.parametrize("option, value, message", [("--seed", "-1", "--seed must be >= 0"),
                                                    ("--drift-intensity", "nan", "--drift-intensity must be"),
                                                    ("--drift-intensity", "inf", "--drift-intensity must be")])
def test_synth_refuses_bad_numbers_before_writing(tmp_path, capsys, option, value, message):
    argv = ["data", "synth", str(tmp_path / "out"), "--sites", "1", "--studies-per-site", "8", option, value]
    if option == "--drift-intensity":
        argv += ["--drift-site", "hospital-1"]
    assert main(argv) == 2
    assert message in _one_line_error(capsys) and not (tmp_path / "out").exists()


def test_plan_for_a_hundred_million_rounds_answers(capsys):
    """Answers (it used to compute one epsilon per round); the table shows log-spaced rounds."""
    argv = ["privacy", "plan", "--dataset-size", "1000", "--batch-size", "32", "--epochs-per-round", "1",
            "--rounds", "100000000", "--target-epsilon", "8", "--delta", "1e-5"]
    assert main([*argv, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    rounds, eps = plan["epsilon_rounds"], plan["epsilon_after_each_round"]
    assert rounds[0] == 1 and rounds[-1] == 100_000_000 and len(rounds) == len(eps) <= 1000
    assert eps == sorted(eps) and eps[-1] <= 8.0 and plan["total_steps"] == 32 * 100_000_000
    assert main(argv) == 0
    assert "of the 100000000 rounds (log-spaced)" in " ".join(capsys.readouterr().out.split())


def test_plan_refuses_prv_beyond_its_bound(capsys):
    assert main(["privacy", "plan", "--dataset-size", "1000", "--batch-size", "32", "--epochs-per-round", "1",
                 "--rounds", "100000000", "--target-epsilon", "8", "--delta", "1e-5", "--accountant", "prv"]) == 2
    assert "limited to 25000 steps" in _one_line_error(capsys)


def test_secure_aggregation_needs_three_sites():
    spec = load_job_spec(REPO / "jobs" / "cxr_classification.yaml")
    for n in (1, 2):
        with pytest.raises(UserError, match="at least 3 sites"):
            check_secure_aggregation(spec, n)
    check_secure_aggregation(spec, 3)
    check_secure_aggregation(spec.model_copy(update={"privacy": spec.privacy.model_copy(
        update={"secure_aggregation": None})}), 2)


# ------------------------------------------------------------------ site stop matches kits exactly


@pytest.fixture
def two_kits(tmp_path_factory, tmp_path):
    kits = provision_example(tmp_path_factory.mktemp("stop"))
    paths = {}
    for name in ("hospital-1", "hospital-10"):  # one kit's path is a prefix of the other's
        paths[name] = tmp_path / name
        shutil.copytree(kits["sites"]["hospital-1"]["kit"], paths[name])
    return paths


def test_site_stop_does_not_touch_a_kit_whose_path_only_starts_the_same(two_kits, capsys):
    ten = two_kits["hospital-10"]
    # a process of hospital-10 (its cmdline names files of that kit, as NVFlare's do)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             str(ten / "startup" / "fed_client.json"), "-m", str(ten)])
    try:
        # hospital-1's stale pid file points at it (a reused pid)
        (two_kits["hospital-1"] / DAEMON_PID_FILE).write_text(str(proc.pid))
        (ten / DAEMON_PID_FILE).write_text(str(proc.pid))
        one_kit, ten_kit = load_kit(two_kits["hospital-1"]), load_kit(ten)
        assert kit_processes(one_kit) == [] and [p.pid for p in kit_processes(ten_kit)] == [proc.pid]
        assert main(["site", "stop", str(two_kits["hospital-1"])]) == 0
        assert "was not running" in capsys.readouterr().out
        time.sleep(0.5)
        assert proc.poll() is None  # hospital-10's process is untouched
        report = stop_kit(ten_kit, grace_s=5)
        assert proc.pid in report.terminated + report.killed and proc.wait(timeout=10) is not None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE

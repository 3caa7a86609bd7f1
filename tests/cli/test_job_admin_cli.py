"""``ai4hi job submit|status|wait|download|abort|list``: clear errors without a server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ai4hi_sdk.cli.main import main
from tests.deploy.conftest import provision_example

REPO = Path(__file__).resolve().parents[2]
LEAD = "lead@consortium.example.org"


def _flat(text: str) -> str:
    """Rich wraps long lines to the terminal width: compare on single spaces."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    return provision_example(tmp_path_factory.mktemp("job_cli"))


@pytest.mark.parametrize("argv", [["list"], ["status", "some-job"], ["wait", "some-job"], ["abort", "some-job"],
                                  ["download", "some-job", "--out", "OUT"],
                                  ["submit", str(REPO / "jobs" / "cxr_classification.yaml")]])
def test_unreachable_server_is_a_clear_error_within_the_timeout(kits, argv, tmp_path, capsys):
    argv = [a if a != "OUT" else str(tmp_path / "out") for a in argv]
    started = time.monotonic()
    code = main(["job", *argv, "--admin", kits["admins"][LEAD], "--connect-timeout", "1"])
    assert code == 2
    err = _flat(capsys.readouterr().err)
    assert "cannot reach the consortium server" in err and "Traceback" not in err
    assert time.monotonic() - started < 30


def test_a_site_kit_is_not_an_admin_kit(kits, capsys):
    assert main(["job", "list", "--admin", kits["sites"]["hospital-1"]["kit"]]) == 2
    assert "this command needs an admin kit" in _flat(capsys.readouterr().err)


def test_invalid_spec_is_reported_before_connecting(kits, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {rounds: 0}\n")
    assert main(["job", "submit", str(bad), "--admin", kits["admins"][LEAD], "--connect-timeout", "1"]) == 2
    assert "train.rounds" in _flat(capsys.readouterr().err)

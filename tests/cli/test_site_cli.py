"""``ai4hi site``: exit codes and reasons a site admin sees."""

from __future__ import annotations

import shutil

import pytest

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.data.synth import synth_site
from tests.deploy.conftest import provision_example


def _flat(text: str) -> str:
    """Rich wraps long lines to the terminal width: compare on single spaces."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("site_cli")
    synth_site(root / "data" / "hospital-1", site_index=0, n_studies=4, seed=1)
    return root, provision_example(root, data_root=root / "data")


def test_check_of_a_ready_site_exits_zero(env, capsys):
    root, kits = env
    assert main(["site", "check", kits["sites"]["hospital-1"]["kit"], "--data", str(root / "data" / "hospital-1")]) == 0
    out = _flat(capsys.readouterr().out)
    assert "ready" in out and "privacy policy in force" in out and "DICOM summary" in out


def test_check_of_a_site_without_dicom_exits_nonzero_with_the_reason(env, tmp_path, capsys):
    _, kits = env
    (tmp_path / "empty").mkdir()
    assert main(["site", "check", kits["sites"]["hospital-1"]["kit"], "--data", str(tmp_path / "empty")]) == 1
    assert "not ready" in _flat(capsys.readouterr().err)


def test_check_catches_a_gpu_request_on_a_gpu_less_machine(env, tmp_path, capsys, monkeypatch):
    root, kits = env
    monkeypatch.setattr("ai4hi_sdk.deploy.readiness.host_gpus", lambda: (0, "no nvidia-smi on PATH"))
    assert main(["site", "check", kits["sites"]["hospital-2"]["kit"], "--data", str(root / "data" / "hospital-1")]) == 1
    err = _flat(capsys.readouterr().err)
    assert "GPUResourceManager" in err.replace("\n", " ")


def test_tampered_kit_is_not_ready(env, tmp_path, capsys):
    root, kits = env
    kit = tmp_path / "kit"
    shutil.copytree(kits["sites"]["hospital-1"]["kit"], kit)
    shutil.copyfile(kit / "startup" / "client.crt", kit / "startup" / "rootCA.pem")  # wrong root
    assert main(["site", "check", str(kit), "--data", str(root / "data" / "hospital-1")]) == 1
    assert "certificate" in _flat(capsys.readouterr().err)


@pytest.mark.parametrize("command", ["check", "start", "stop"])
def test_not_a_kit_or_an_admin_kit_is_a_user_error(env, tmp_path, capsys, command):
    _, kits = env
    assert main(["site", command, str(tmp_path)]) == 2
    assert "not a provisioned kit" in _flat(capsys.readouterr().err)
    assert main(["site", command, kits["admins"]["lead@consortium.example.org"]]) == 2
    assert "admin kit" in _flat(capsys.readouterr().err)


def test_stopping_a_site_that_is_not_running_is_fine(env, capsys):
    _, kits = env
    assert main(["site", "stop", kits["sites"]["hospital-1"]["kit"]]) == 0
    assert "was not running" in _flat(capsys.readouterr().out)

"""Readiness checks: each way a site is not ready is caught with a reason."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.deploy.kit import load_kit
from ai4hi_sdk.deploy.readiness import check_gpus, site_readiness
from tests.deploy.conftest import provision_example


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ready")
    synth_site(root / "data" / "hospital-1", site_index=0, n_studies=4, seed=1)
    return root, provision_example(root, data_root=root / "data")


def _site(env, tmp_path, site="hospital-1") -> Path:
    dest = tmp_path / site
    shutil.copytree(env[1]["sites"][site]["kit"], dest)
    return dest


def _failed(report) -> dict[str, str]:
    return {c.name: c.detail for c in report.failures}


def test_a_provisioned_site_with_data_is_ready(env):
    root, kits = env
    report = site_readiness(load_kit(kits["sites"]["hospital-1"]["kit"]), root / "data" / "hospital-1", gpus=0)
    assert report.ready, report.failures
    assert report.data_summary["studies"] == 4
    assert report.policy["require_dp"] is True
    assert any(c.name == "server reachable" and c.level == "warn" for c in report.checks)  # server not up


def test_site_asking_for_a_gpu_on_a_gpu_less_machine_is_not_ready(env):
    kit = load_kit(env[1]["sites"]["hospital-2"]["kit"])
    checks = check_gpus(kit, available=0, how="test")
    assert checks[0].level == "fail"
    assert "GPUResourceManager" in checks[0].detail and "num_of_gpus" in checks[0].detail


def test_missing_or_invalid_policy_is_not_ready(env, tmp_path):
    root = env[0]
    kit_dir = _site(env, tmp_path)
    (kit_dir / "ai4hi" / "site_policy.yaml").write_text("max_epsilon_per_dataset: -1\n")
    report = site_readiness(load_kit(kit_dir), root / "data" / "hospital-1", gpus=0)
    assert "max_epsilon_per_dataset" in _failed(report)["privacy policy"]
    (kit_dir / "ai4hi" / "site_policy.yaml").unlink()
    report = site_readiness(load_kit(kit_dir), root / "data" / "hospital-1", gpus=0)
    assert "refuses to train" in _failed(report)["privacy policy"]


def test_no_dicom_is_not_ready(env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not dicom")
    report = site_readiness(load_kit(_site(env, tmp_path)), empty, gpus=0)
    assert "no readable DICOM" in _failed(report)["DICOM"]
    report = site_readiness(load_kit(_site(env, tmp_path / "b")), tmp_path / "missing", gpus=0)
    assert "not a folder" in _failed(report)["data folder"]


def test_data_folder_other_than_the_configured_one_is_flagged(env, tmp_path):
    other = tmp_path / "other"
    synth_site(other, site_index=1, n_studies=2, seed=2)
    report = site_readiness(load_kit(_site(env, tmp_path)), other, gpus=0)
    assert report.ready
    assert any(c.name == "data folder" and c.level == "warn" and "site.yaml" in c.detail for c in report.checks)


def test_privacy_scope_without_egress_log_is_not_ready(env, tmp_path):
    kit_dir = _site(env, tmp_path)
    (kit_dir / "local" / "privacy.json").write_text(json.dumps(
        {"scopes": [{"name": "open", "task_result_filters": []}], "default_scope": "open"}))
    report = site_readiness(load_kit(kit_dir), env[0] / "data" / "hospital-1", gpus=0)
    assert "does not run the egress guard" in _failed(report)["site-enforced filters"]


def test_server_port_in_use_is_not_ready(env):
    server = load_kit(env[1]["server"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", server.server_target[1]))
        sock.listen(1)
        report = site_readiness(server, gpus=0)
    assert f"port {server.server_target[1]}" in _failed(report)
    assert site_readiness(server, gpus=0).ready

"""Acceptance: a real 2-hospital consortium on 127.0.0.1, provisioned, started from its kits,
running a DP job submitted by the lead, downloaded in the ``result/`` layout, then stopped with
nothing left behind. Also: a site's own privacy.json / policy applies to a job that does not ask
for it (no egress filter, no DP) — same deployment, to keep the test to about a minute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ai4hi_sdk.audit.hash_chain import read_entries, verify_chain
from ai4hi_sdk.cli.main import main
from ai4hi_sdk.deploy.admin import AdminSession
from ai4hi_sdk.site.egress_guard import EGRESS_LOG
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from tests.deploy.conftest import running_consortium, small_spec, stop_and_check_nothing_left

pytestmark = pytest.mark.deploy
SITES = ["hospital-1", "hospital-2"]
JOB_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with running_consortium(tmp_path_factory.mktemp("deploy"), n_sites=len(SITES)) as running:
        yield running


def test_dp_job_runs_and_downloads_in_the_simulate_layout(deployment):
    spec = small_spec("deploy-dp", dp=True)
    with AdminSession(deployment["admin"], timeout_s=60) as session:
        job_id = session.submit(spec)
        deployment["jobs"]["dp"] = job_id
        seen = []
        meta = session.wait(job_id, timeout_s=JOB_TIMEOUT_S, on_progress=seen.append)
        assert meta["status"] == "FINISHED:COMPLETED", meta
        assert any(p.rounds_done is not None for p in seen)  # progress was visible while it ran
        metrics = session.download_result(job_id, deployment["root"] / "download")
    result = deployment["root"] / "download" / "result"
    assert metrics["status"] == "completed", metrics
    assert json.loads((result / "metrics.json").read_text())["job_id"] == job_id
    assert [r["status"] for r in metrics["rounds"]] == ["completed", "completed"]
    assert set(metrics["sites"]) == set(SITES) and not metrics["refused"]
    state = torch.load(result / "global_model.pt")
    assert state and all(torch.isfinite(v).all() for v in state.values())
    assert (result / "receipts.jsonl").is_file()
    for site in SITES:
        assert metrics["privacy"][site]["datasets"]["reported"]["epsilon_spent"] > 0
        assert metrics["privacy"][site]["datasets"]["reported"]["rounds"] == 2
    assert set(metrics["final_validation"]["sites"]) == set(SITES)


def test_each_sites_ledger_is_a_valid_chain_matching_what_it_reported(deployment):
    job_id = deployment["jobs"].get("dp")
    if job_id is None:
        pytest.skip("the DP job did not run")
    metrics = json.loads((deployment["root"] / "download" / "result" / "metrics.json").read_text())
    for site, kit in deployment["sites"].items():
        ledger = PrivacyLedger(kit.path / PRIVACY_LEDGER)
        assert ledger.verify().ok
        spent = [r for r in ledger.records() if r["status"] == "spent" and r["job_id"] == job_id]
        assert len(spent) == 2
        reported = metrics["privacy"][site]["datasets"]["reported"]["epsilon_spent"]
        assert spent[-1]["epsilon_after"] == pytest.approx(reported, rel=1e-6)
        assert verify_chain(kit.path / EGRESS_LOG).ok


def _drop_job_filters(job_dir: Path) -> None:
    """Export as a job that brings no egress filter of its own (as any non-SDK job would)."""
    for config in job_dir.rglob("config_fed_client.json"):
        data = json.loads(config.read_text())
        data["task_result_filters"] = []
        config.write_text(json.dumps(data, indent=2))


def test_site_policy_applies_to_a_job_that_does_not_ask_for_it(deployment, capsys):
    spec = small_spec("deploy-no-dp", dp=False)
    with AdminSession(deployment["admin"], timeout_s=60) as session:
        job_id = session.submit(spec, prepare=_drop_job_filters)
        session.wait(job_id, timeout_s=JOB_TIMEOUT_S)
        metrics = session.download_result(job_id, deployment["root"] / "download-no-dp")
    # every site's policy requires DP-SGD: both refuse, the job stops with the reason
    assert metrics["status"] == "stopped", metrics
    assert {r["site"] for r in metrics["refused"]} == set(SITES)
    assert all("differential privacy" in r["reason"] for r in metrics["refused"])
    assert metrics["rounds"][0]["status"] == "abandoned" and metrics["rounds"][0]["sites"] == {}
    for site, kit in deployment["sites"].items():
        # the job had no egress filter, yet the site's privacy.json scope logged what left: the refusal
        records = [e["record"] for e in read_entries(kit.path / EGRESS_LOG) if e["record"]["job_id"] == job_id]
        assert records and all(r["tensors"] == [] for r in records), records
        assert verify_chain(kit.path / EGRESS_LOG).ok
        refused = [r for r in PrivacyLedger(kit.path / PRIVACY_LEDGER).records() if r["job_id"] == job_id]
        assert all(r["status"] != "spent" for r in refused)
    # no site trained: `job wait` and `job download` end non-zero and name each site's refusal
    # (NVFlare itself says FINISHED:COMPLETED)
    capsys.readouterr()
    assert main(["job", "wait", job_id, "--admin", str(deployment["admin"]), "--timeout", "60"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "no site trained" in out and "FINISHED:COMPLETED" in out, out
    assert all(f"{site} refused round 0" in out for site in SITES), out
    assert main(["job", "download", job_id, "--admin", str(deployment["admin"]),
                 "--out", str(deployment["root"] / "download-no-dp-cli")]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "no site trained" in out and "epsilon 0 spent" not in out, out


def test_a_gate_disabling_job_is_refused_by_the_sites_and_status_says_why(deployment, capsys):
    """The hostile job of tests/site (its trainer tries to switch the gate off) submitted to the real
    consortium: no site runs it (its code is not allowed by hash, and the sites require DP-SGD),
    only refusals leave, and `ai4hi job status` shows each site's reason."""
    from ai4hi_sdk.cli.main import main
    from ai4hi_sdk.config.job_spec import JobSpec
    from ai4hi_sdk.jobs.builder import code_sha256
    from tests.site.conftest import FIXTURES, SMALL_MODEL

    spec = JobSpec(name="deploy-hostile", trainer="gate_disabling_trainer:GateDisablingTrainer",
                   base_dir=str(FIXTURES), code=["memory_trainer.py", "gate_disabling_trainer.py"], min_sites=1,
                   model=SMALL_MODEL, train={"rounds": 1, "batch_size": 4, "threads": 1})
    with AdminSession(deployment["admin"], timeout_s=60) as session:
        job_id = session.submit(spec)
        session.wait(job_id, timeout_s=JOB_TIMEOUT_S)
    capsys.readouterr()
    assert main(["job", "status", job_id, "--admin", str(deployment["admin"])]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for site in SITES:
        assert f"{site} refused round 0" in shown, shown
    assert code_sha256(spec) in shown and "does not allow" in shown and "requires differential privacy" in shown
    for site, kit in deployment["sites"].items():
        records = [e["record"] for e in read_entries(kit.path / EGRESS_LOG) if e["record"]["job_id"] == job_id]
        assert records and all(r["tensors"] == [] and r["metric_names"] == [] for r in records), records
        assert not (kit.path / "ai4hi" / "jobs" / job_id).exists(), "the job's code was installed"


def test_stop_leaves_no_process_port_or_tmp_file_behind(deployment):
    stop_and_check_nothing_left(deployment)

"""Acceptance: secure aggregation + DP-SGD on a real provisioned 3-hospital consortium on 127.0.0.1.

Same steps as ``test_deployment_e2e.py`` (provision, start the kits, submit as the lead, wait,
download, stop), with three sites because secure aggregation needs at least three to exchange
keys. Each site signs its per-round keys with the RSA key NVFlare provisioning wrote to
``<kit>/startup/client.key``; the other sites and the server check the certificates against the
kit's ``rootCA.pem``; each site accepts keys only from the sites its kit's ``ai4hi/consortium.json``
lists and refuses the server's certificate (named in its ``fed_client.json``). The server only ever
receives uint32 masked vectors (and uint8 headers, keys and signatures), and each site's privacy
ledger names exactly the masked vector its egress log says left."""

from __future__ import annotations

import json

import pytest

from ai4hi_sdk.audit.hash_chain import read_entries, verify_chain
from ai4hi_sdk.deploy.admin import AdminSession
from ai4hi_sdk.site.egress_guard import EGRESS_LOG
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from tests.deploy.conftest import running_consortium, small_spec, stop_and_check_nothing_left

pytestmark = pytest.mark.deploy
SITES = ["hospital-1", "hospital-2", "hospital-3"]
JOB_TIMEOUT_S = 300
SECURE = {"secure_aggregation": {"clip": 1.0, "max_samples_per_site": 64}}
PROTOCOL_TENSORS = {("secagg_masked", "uint32"), ("secagg_masked_header", "uint8"), ("secagg_advertise", "uint8")}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with running_consortium(tmp_path_factory.mktemp("deploy-secagg"), n_sites=len(SITES)) as running:
        yield running


@pytest.fixture(scope="module")
def secure_job(deployment):
    spec = small_spec("deploy-secagg-dp", dp=True, privacy=SECURE)
    assert spec.min_sites == 2 and spec.train.rounds == 2
    with AdminSession(deployment["admin"], timeout_s=60) as session:
        job_id = session.submit(spec)
        meta = session.wait(job_id, timeout_s=JOB_TIMEOUT_S)
        metrics = session.download_result(job_id, deployment["root"] / "download")
    return {"job_id": job_id, "meta": meta, "metrics": metrics, "result": deployment["root"] / "download" / "result"}


def test_secure_dp_job_completes_with_two_securely_aggregated_rounds(secure_job):
    assert secure_job["meta"]["status"] == "FINISHED:COMPLETED", secure_job["meta"]
    metrics = json.loads((secure_job["result"] / "metrics.json").read_text())
    assert metrics["job_id"] == secure_job["job_id"]
    assert metrics["status"] == "completed", metrics
    assert not metrics["refused"], metrics["refused"]
    assert [r["status"] for r in metrics["rounds"]] == ["completed", "completed"]
    for rnd in metrics["rounds"]:
        assert 0 < rnd["quantisation_error_bound"] < 1e-3, rnd
        assert rnd["consortium_metrics"] and "train_samples" in rnd["consortium_metrics"], rnd
        assert sorted(rnd["sites"]) == SITES and not rnd.get("dropped"), rnd
    # the server found its kit's rootCA.pem, checked every site's signed keys and rejected none
    assert metrics["secure_aggregation"]["server_checks_signatures"] is True
    assert metrics["secure_aggregation"]["rejected"] == []


def test_server_receives_only_masked_integers_for_training(secure_job):
    receipts = [e["record"] for e in read_entries(secure_job["result"] / "receipts.jsonl")]
    mine = [r for r in receipts if r["job_id"] == secure_job["job_id"]]
    assert mine == receipts
    train = [r for r in mine if r["task"] == "train"]
    assert sorted(r["site"] for r in train) == sorted(SITES * 2)  # 3 sites x 2 rounds
    for record in train:
        tensors = {(t["name"], t["dtype"]) for t in record["tensors"]}
        assert {("secagg_masked", "uint32"), ("secagg_masked_header", "uint8")} <= tensors <= PROTOCOL_TENSORS, record
    # each round: every site signed the survivor set (consistency round) before any share was revealed
    for task in ("ai4hi_secagg_consistency", "ai4hi_secagg_unmask"):
        assert sorted(r["site"] for r in mine if r["task"] == task) == sorted(SITES * 2), task
    for record in mine:  # no float tensor ever reaches the server, whatever the task
        assert not [t for t in record["tensors"] if t["dtype"].startswith(("float", "bfloat"))], record


def test_each_sites_ledger_names_the_masked_vectors_its_egress_log_sent(deployment, secure_job):
    job_id = secure_job["job_id"]
    for site, kit in deployment["sites"].items():
        ledger = PrivacyLedger(kit.path / PRIVACY_LEDGER)
        assert ledger.verify().ok, site
        spent = [r for r in ledger.records() if r["status"] == "spent" and r["job_id"] == job_id]
        assert len(spent) == 2, (site, spent)
        assert verify_chain(kit.path / EGRESS_LOG).ok, site
        egress = [e["record"] for e in read_entries(kit.path / EGRESS_LOG)
                  if e["record"]["job_id"] == job_id and e["record"]["task"] == "train"]
        assert [r["egress"]["sha256"] for r in spent] == [r["sha256"] for r in egress], site
        for record in egress:
            assert {(t["name"], t["dtype"]) for t in record["tensors"]} <= PROTOCOL_TENSORS, record


def test_stop_leaves_no_process_port_or_tmp_file_behind(deployment):
    stop_and_check_nothing_left(deployment)

"""End-to-end in the real NVFlare simulator: a hostile job meets three sites that decide for
themselves (issue 11 acceptance 1-3).

The job ships a trainer that tries to switch the site's gate off (overrides, a DP-less copy of the
spec, patching the SDK's gate class, sending around the runtime) and, at hospital-3, fails with
patient data in its error.

* hospital-1 requires DP-SGD and allows the code: refused before the code is imported;
* hospital-2 allows plain training but not this code: refused, the hash in the reason; once its
  admin allows the hash (`ai4hi site allow-code`), it trains and only its committed update leaves;
* hospital-3 allows the code and plain training: the trainer fails; only the error's class leaves.

Only refusals (and hospital-2's committed update in the second run) are in the egress logs, and the
patient data in hospital-3's error reaches no file on the server's side.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ai4hi_sdk.audit.hash_chain import read_entries, verify_chain
from ai4hi_sdk.cli.main import main
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.jobs.builder import code_sha256
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.site.egress_guard import EGRESS_LOG
from tests.site.conftest import FIXTURES, SMALL_MODEL, write_policy

pytestmark = pytest.mark.e2e
SITES = ("hospital-1", "hospital-2", "hospital-3")
SECRET = "DOE^JOHN"


def _egress(ws: Path, site: str) -> list[dict]:
    log = ws / "sites" / site / EGRESS_LOG
    assert verify_chain(log).ok
    return [e["record"] for e in read_entries(log)]


def _server_side_text(ws: Path) -> str:
    """Every file the server (and the lead) hold: the server's simulator folder and the results."""
    texts = []
    for root in (ws / "simulate" / "server", ws / "result"):
        for path in root.rglob("*"):
            if path.is_file():
                texts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("decides")
    for site in SITES:
        (root / "data" / site).mkdir(parents=True)
        (root / "data" / site / "labels.csv").write_text("StudyInstanceUID,label\n")  # a site folder
    (root / "data" / "hospital-3" / "patient.txt").write_text(SECRET)  # data only hospital-3 holds
    spec = JobSpec(name="hostile", trainer="gate_disabling_trainer:GateDisablingTrainer", base_dir=str(FIXTURES),
                   code=["memory_trainer.py", "gate_disabling_trainer.py"], min_sites=1, model=SMALL_MODEL,
                   train={"rounds": 1, "batch_size": 4, "threads": 1, "lr": 0.05})
    digest = code_sha256(spec)
    ws = root / "ws"
    write_policy(ws / "sites" / "hospital-1", require_dp=True, allowed_code_sha256=[digest])
    write_policy(ws / "sites" / "hospital-2", require_dp=False)
    write_policy(ws / "sites" / "hospital-3", require_dp=False, allowed_code_sha256=[digest])
    first = simulate(spec, root / "data", ws, timeout_s=240)
    first_egress = {s: _egress(ws, s) for s in SITES}
    first_server = _server_side_text(ws)
    # hospital-2's admin reviews the code and allows it by its hash, with the CLI
    assert main(["site", "allow-code", str(ws / "sites" / "hospital-2"), digest]) == 0
    second = simulate(spec, root / "data", ws, timeout_s=240)
    return {"ws": ws, "digest": digest, "first": first, "first_egress": first_egress, "first_server": first_server,
            "second": second}


def test_every_site_refused_and_only_refusals_left(runs):
    metrics = runs["first"].metrics
    assert metrics["status"] != "completed", metrics
    reasons = {r["site"]: r["reason"] for r in metrics["refused"]}
    assert set(reasons) == set(SITES), metrics
    assert "requires differential privacy" in reasons["hospital-1"]
    assert runs["digest"] in reasons["hospital-2"] and "does not allow" in reasons["hospital-2"]
    assert reasons["hospital-3"] == ("the site could not complete the task (ValueError); "
                                     "the details stay in the site's log")
    for site, records in runs["first_egress"].items():
        assert records, site
        for record in records:
            assert record["tensors"] == [] and record["metric_names"] == [], (site, record)
            assert record["refusal"] == reasons[site]


def test_a_failing_trainers_patient_data_stays_at_the_site(runs):
    assert SECRET not in runs["first_server"]
    assert SECRET not in str(runs["first"].metrics) and SECRET not in str(runs["second"].metrics)
    # the site itself keeps the traceback (its own log), so its admin can fix it
    site_log = (runs["ws"] / "simulate.log").read_text()
    assert SECRET in site_log


def test_once_allowed_the_code_runs_and_only_its_committed_update_leaves(runs):
    metrics = runs["second"].metrics
    assert metrics["status"] == "completed", metrics
    assert list(metrics["rounds"][0]["sites"]) == ["hospital-2"]
    refused = {r["site"] for r in metrics["refused"]}
    assert refused == {"hospital-1", "hospital-3"}
    ws = runs["ws"]
    sent = [r for r in _egress(ws, "hospital-2") if r["task"] == "train" and r["tensors"]]
    assert len(sent) == 1
    commitments = [r for r in PrivacyLedger(ws / "sites" / "hospital-2" / PRIVACY_LEDGER).records(verified_only=True)]
    assert commitments == []  # no DP spend at a site that allows plain training ...
    ledger = [e["record"] for e in read_entries(ws / "sites" / "hospital-2" / PRIVACY_LEDGER)]
    assert [(r["type"], r["egress"]["sha256"]) for r in ledger] == [("egress", sent[0]["sha256"])]  # ... but committed
    # hospital-1 never imported the code: its refusal came before (and the patch in the code never ran there)
    assert all(not r["tensors"] for r in _egress(ws, "hospital-1"))


@pytest.fixture(scope="module")
def k_boundary(tmp_path_factory):
    """A validation job in the real simulator that asks for k = 2 at a site whose policy keeps the
    default floor 10; its test split has three subgroups of 9, 9 and 10 studies."""
    import torch

    from ai4hi_sdk.config.validation_spec import ValidationSpec
    from ai4hi_sdk.jobs.validate import run_validation
    from ai4hi_sdk.site.code_bundle import bundle_sha256, pack_code
    from ai4hi_sdk.trainers.loading import trainer_class_for

    root = tmp_path_factory.mktemp("kboundary")
    (root / "data" / "hospital-1").mkdir(parents=True)
    (root / "data" / "hospital-1" / "labels.csv").write_text("StudyInstanceUID,label\n")
    spec = JobSpec(name="kfloor", trainer="memory_trainer:MemoryTrainer", base_dir=str(FIXTURES),
                   code=["memory_trainer.py"], min_sites=1, model={**SMALL_MODEL, "test_groups": [9, 9, 10]},
                   train={"rounds": 1, "batch_size": 4, "threads": 1})
    write_policy(root / "sites" / "hospital-1", require_dp=False,
                 allowed_code_sha256=[bundle_sha256(pack_code(FIXTURES, spec.code))])
    champion = trainer_class_for(spec)(spec, device="cpu").initial_state()
    candidate = {k: v + 0.01 * torch.randn_like(v) for k, v in champion.items()}
    config = ValidationSpec(min_count=2, attributes=["sex"], timeout_s=120)
    run = run_validation(spec, config, root / "data", root / "validate", champion=champion, candidate=candidate,
                         sites_root=root / "sites", timeout_s=240)
    return {"root": root, "run": run}


def test_k_boundary_and_a_job_asking_for_a_smaller_k(k_boundary):
    run = k_boundary["run"]
    assert run.ok, run.record
    report = run.record["validation"]["hospital-1"]
    assert report["meta"]["k"] == 10  # the site's floor, not the job's 2
    for role in ("candidate", "champion"):
        sex = report[role]["subgroups"]["sex"]
        assert set(sex["cells"]) == {"C"} and sex["cells"]["C"]["n"] == 10  # k studies: shown
        assert sex["suppressed_cells"] == 2  # two cells of k-1: neither shown nor named
    sent = [e["record"] for e in read_entries(k_boundary["root"] / "sites" / "hospital-1" / EGRESS_LOG)]
    names = {n for r in sent for n in r["metric_names"]}
    assert names and not any("|A|" in n or "|B|" in n for n in names)

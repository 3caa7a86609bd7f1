"""Reports at the site: the gate refuses contrastive jobs where patient-level DP is required and
labeler rule sets the site does not hold; the runtime sends weak-label agreement only as an
aggregate over at least k studies, and nothing of a report."""

from __future__ import annotations

import csv
import json

import pytest

from ai4hi_sdk.config.job_spec import ClientDPSpec, DPSGDSpec, JobSpec
from ai4hi_sdk.data.synth import SYNTHETIC_REPORT_TRUTH, synth_site
from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.jobs.wire import WEAK_LABEL_METRICS
from ai4hi_sdk.site.gate import JobRequest, SiteGate
from ai4hi_sdk.site.runtime import SiteRuntime
from tests.site.conftest import SMALL_MODEL, write_policy

CLIENT_DP = ClientDPSpec(clip=1.0, noise_multiplier=1.0)
WEAK = {"labels_from": "reports", "report_finding": "opacity", "labeler_version": "ai4hi-negex-1", "image_size": 16}


def _gate(tmp_path, **policy) -> SiteGate:
    write_policy(tmp_path / "ws", **policy)
    return SiteGate(tmp_path / "ws", "job-1")


# --------------------------------------------------------------------------- the contrastive method

def test_contrastive_job_is_refused_where_patient_level_dp_is_required(tmp_path):
    gate = _gate(tmp_path, require_dp=True, require_secure_aggregation=True)
    request = JobRequest(kind="train", client_dp=CLIENT_DP, secure_aggregation=True, method="image_report")
    with pytest.raises(RoundRefused) as err:
        gate.check_job(request)
    reason = str(err.value)
    assert reason.startswith("method image_report trains with a contrastive loss")
    assert "per-example DP-SGD does not bound one patient's influence" in reason
    assert "client-level DP with secure aggregation" in reason


def test_contrastive_job_is_refused_even_if_it_claims_dp_sgd(tmp_path):
    """Playing the job author who adds DP-SGD to get past a DP-requiring site: the refusal stands."""
    gate = _gate(tmp_path, require_dp=True, require_secure_aggregation=True)
    request = JobRequest(kind="train", dp_sgd=DPSGDSpec(noise_multiplier=1.0), client_dp=CLIENT_DP,
                         secure_aggregation=True, method="image_report")
    with pytest.raises(RoundRefused, match="contrastive loss"):
        gate.check_job(request)
    # and the runtime reads such a job's settings as invalid before anything else
    job = JobSpec(name="x", privacy={"secure_aggregation": {}, "client_dp": {"clip": 1, "noise_multiplier": 1}})
    crafted = {**job.model_dump(mode="json"), "method": "image_report",
               "privacy": {**job.privacy.model_dump(mode="json"), "dp_sgd": {"noise_multiplier": 1.0}}}
    runtime = SiteRuntime(crafted, site_name="site-a", job_id="j", workspace=tmp_path / "ws")
    with pytest.raises(RoundRefused, match="invalid.*does not bound one patient's influence"):
        runtime.admit("train")


def test_contrastive_job_passes_a_site_accepting_client_level_dp(tmp_path):
    gate = _gate(tmp_path, require_dp=False, require_secure_aggregation=True)
    gate.check_job(JobRequest(kind="train", client_dp=CLIENT_DP, secure_aggregation=True, method="image_report"))
    # a supervised job is not touched by the contrastive rule
    gate = _gate(tmp_path, require_dp=True, require_secure_aggregation=False)
    gate.check_job(JobRequest(kind="train", dp_sgd=DPSGDSpec(noise_multiplier=1.0)))


def test_runtime_refuses_the_contrastive_job_before_any_job_code(tmp_path):
    write_policy(tmp_path / "ws", require_dp=True)
    spec = JobSpec(name="x", method="image_report",
                   privacy={"secure_aggregation": {}, "client_dp": {"clip": 1.0, "noise_multiplier": 1.0}})
    runtime = SiteRuntime(spec.model_dump(mode="json"), site_name="site-a", job_id="j", workspace=tmp_path / "ws")
    with pytest.raises(RoundRefused, match="contrastive loss"):
        runtime.admit("train")
    assert runtime._trainer is None


# --------------------------------------------------------------------------- labeler versions

@pytest.mark.parametrize("kind", ["train", "validate"])
def test_site_refuses_a_rule_set_it_does_not_hold(tmp_path, kind):
    gate = _gate(tmp_path, require_dp=False, require_secure_aggregation=False, allowed_job_kinds=["train", "validate"])
    with pytest.raises(RoundRefused) as err:
        gate.check_job(JobRequest(kind=kind, labeler_version="ai4hi-negex-7", report_finding="opacity"))
    assert "ai4hi-negex-7" in str(err.value) and "it holds: ai4hi-negex-1" in str(err.value)
    with pytest.raises(RoundRefused, match="does not label the finding 'tumour'"):
        gate.check_job(JobRequest(kind=kind, labeler_version="ai4hi-negex-1", report_finding="tumour"))
    gate.check_job(JobRequest(kind=kind, labeler_version="ai4hi-negex-1", report_finding="opacity"))


# --------------------------------------------------------------------------- agreement leaves as an aggregate

@pytest.fixture(scope="module")
def report_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    synth_site(root / "data" / "site-a", site_index=0, n_studies=30, seed=5, reports=True)
    return root


def _runtime(root, ws, k: int) -> SiteRuntime:
    write_policy(ws, require_dp=False, min_count=k)
    spec = JobSpec(name="weak", model=SMALL_MODEL, data={**WEAK, "uncertain": "negative"},
                   train={"rounds": 1, "batch_size": 8, "threads": 1, "augment": False})
    return SiteRuntime(spec.model_dump(mode="json"), site_name="site-a", job_id="job-1", workspace=ws,
                       data_root=str(root / "data"))


def _expected_agreement(site) -> tuple[int, float]:
    """Independently: weak label = the synthetic report's truth (uncertain counted negative) vs labels.csv."""
    truth = json.loads((site / SYNTHETIC_REPORT_TRUTH).read_text())
    with open(site / "labels.csv", newline="") as fh:
        hand = {r["StudyInstanceUID"]: int(r["label"]) for r in csv.DictReader(fh)}
    weak = {s: int(t["truth"].get("opacity") == "positive") for s, t in truth.items()}
    return len(weak), sum(weak[s] == hand[s] for s in weak) / len(weak)


def test_agreement_leaves_with_training_and_validation_when_k_studies_have_both(report_site, tmp_path):
    studies, agreement = _expected_agreement(report_site / "data" / "site-a")
    assert agreement < 1.0  # uncertain-as-negative makes some positive images negative
    runtime = _runtime(report_site, tmp_path / "ws", k=studies)  # the boundary: exactly k studies
    out = runtime.train(_initial(runtime), 0, 1)
    assert out.metrics["weak_label_studies"] == studies
    assert out.metrics["weak_label_agreement"] == pytest.approx(agreement)
    assert "weak_label_kappa" in out.metrics
    assert not {"train_loss", "val_loss"} & set(out.metrics)  # local statistics still stay


def test_agreement_is_suppressed_below_k(report_site, tmp_path):
    studies, _ = _expected_agreement(report_site / "data" / "site-a")
    runtime = _runtime(report_site, tmp_path / "ws", k=studies + 1)
    out = runtime.train(_initial(runtime), 0, 1)
    assert not set(WEAK_LABEL_METRICS) & set(out.metrics)
    # the k check is the runtime's: even a metrics dict carrying them is filtered when the count is short
    assert runtime._plain_metrics({"weak_label_studies": studies, "weak_label_agreement": 0.5}) == {}


def test_validation_result_carries_agreement_and_no_report_content(report_site, tmp_path):
    runtime = _runtime(report_site, tmp_path / "ws", k=2)
    out = runtime.validate(_initial(runtime))
    assert {"val_samples", *WEAK_LABEL_METRICS} <= set(out.metrics)
    assert not out.params and set(out.meta) <= set()
    texts = [r.text for r in _reports(report_site / "data" / "site-a")]
    blob = json.dumps({"metrics": out.metrics, "meta": out.meta})
    assert not any(sentence in blob for text in texts for sentence in text.split(". ") if len(sentence) > 8)


def _reports(site):
    from ai4hi_sdk.data.reports import load_site_reports

    return list(load_site_reports(site).reports.values())


def _initial(runtime):
    from ai4hi_sdk.trainers.state import exchanged_state

    return exchanged_state(runtime.model)

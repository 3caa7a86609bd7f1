"""End-to-end (real NVFlare simulator): the validation job returns, per site, aggregates equal to
the same metrics computed centrally from the site's own predictions; every payload that left a
site is logged and holds no per-study value; a monitoring job alarms at the site whose detector
was recalibrated and not at the other."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from ai4hi_sdk.audit.hash_chain import read_entries, verify_chain
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.jobs.validate import run_validation
from ai4hi_sdk.trainers.classification import ClassificationTrainer

pytestmark = pytest.mark.e2e
SITES = ("hospital-1", "hospital-2")
CONFIG = ValidationSpec(min_count=5, threshold=0.5, drift_permutations=100, timeout_s=120)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    for i, site in enumerate(SITES):
        synth_site(root / "data" / site, site_index=i, n_studies=60, seed=5)
    spec = JobSpec(name="val-e2e", model={"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
                   train={"rounds": 1, "batch_size": 16, "threads": 1}, data={"image_size": 32})
    champion = ClassificationTrainer(spec, device="cpu").initial_state()
    # a candidate trained a little at hospital-1 (plain Python, no federation needed for the test)
    trainer = ClassificationTrainer(spec, site_dir=root / "data" / "hospital-1", site_name="hospital-1", device="cpu")
    candidate = {k: champion[k] + d for k, d in trainer.fit(champion, 0).delta.items()}
    sites_root = root / "sites"
    policy = Path(__file__).resolve().parents[2] / "jobs" / "fixtures" / "policy_without_dp.yaml"
    for site in SITES:
        (sites_root / site / "ai4hi").mkdir(parents=True)
        shutil.copy(policy, sites_root / site / "ai4hi" / "site_policy.yaml")
        with open(sites_root / site / "ai4hi" / "site_policy.yaml", "a") as f:
            f.write("allowed_job_kinds: [train, validate, monitor]\n")
    validated = run_validation(spec, CONFIG, root / "data", root / "validate", champion=champion, candidate=candidate,
                               sites_root=sites_root, timeout_s=240)
    # new data arrives: new patients at both sites, hospital-2's detector recalibrated
    for i, site in enumerate(SITES):
        shutil.rmtree(root / "data" / site)
        synth_site(root / "data" / site, site_index=i, n_studies=60, seed=6,
                   intensity_shift=0.15 if site == "hospital-2" else 0.0)
    monitored = run_validation(spec, CONFIG, root / "data", root / "monitor", champion=champion, tasks=("monitor",),
                               sites_root=sites_root, timeout_s=240)
    return {"root": root, "spec": spec, "candidate": candidate, "champion": champion, "validated": validated,
            "monitored": monitored, "sites_root": sites_root}


def _central(run, site, state):
    """What the site predicted, recomputed here (test only: predictions never leave a real site)."""
    data = run["root"] / "data_v1" / site
    trainer = ClassificationTrainer(run["spec"], site_dir=data, site_name=site, device="cpu")
    return trainer.predict_test(state)


@pytest.fixture(scope="module")
def central(run, tmp_path_factory):
    # the v1 data were replaced for monitoring: regenerate them (deterministic) for the central check
    for i, site in enumerate(SITES):
        synth_site(run["root"] / "data_v1" / site, site_index=i, n_studies=60, seed=5)
    return {site: {role: _central(run, site, run[role]) for role in ("candidate", "champion")} for site in SITES}


def test_validation_job_completes(run):
    rec = run["validated"].record
    assert run["validated"].ok, rec
    assert set(rec["validation"]) == set(SITES) and not rec["rejected"] and not rec["refused"]


def test_site_metrics_equal_central_metrics(run, central):
    rec = run["validated"].record
    for site in SITES:
        for role in ("candidate", "champion"):
            scores, labels, attrs = central[site][role]
            got = rec["validation"][site][role]
            assert got["n"] == len(labels) and got["positives"] == int(labels.sum())
            assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
            pred = scores >= CONFIG.threshold
            assert got["sensitivity"] == pytest.approx(pred[labels == 1].mean(), abs=1e-9)
            assert got["specificity"] == pytest.approx((~pred[labels == 0]).mean(), abs=1e-9)
            assert got["brier"] == pytest.approx(brier_score_loss(labels, scores), abs=1e-6)
            for attr, cells in got["subgroups"].items():
                values = np.array(attrs[attr])
                for group, cell in cells.get("cells", {}).items():
                    assert cell["n"] == (values == group).sum() >= CONFIG.min_count
                for group in set(values):
                    if (values == group).sum() < CONFIG.min_count:
                        assert group not in cells.get("cells", {})
        p_cand, labels, _ = central[site]["candidate"]
        p_champ = central[site]["champion"][0]
        assert rec["validation"][site]["paired"]["delta"] == pytest.approx(
            roc_auc_score(labels, p_cand) - roc_auc_score(labels, p_champ), abs=1e-6)


def test_no_per_study_value_left_any_site(run, central):
    per_study = {round(float(x), 6) for site in SITES for role in ("candidate", "champion")
                 for x in central[site][role][0]}
    for site in SITES:
        log = run["sites_root"] / site / "ai4hi" / "egress_log.jsonl"
        assert verify_chain(log).ok
        records = [e["record"] for e in read_entries(log)]
        assert [r["task"] for r in records] == ["ai4hi_cross_validate", "ai4hi_monitor"]
        for r in records:
            assert r["payload_kind"] == "METRICS" and r["tensors"] == [] and r["num_elements"] == 0
            assert all(name.split("|")[0] in ("candidate", "champion", "paired", "meta", "drift")
                       for name in r["metric_names"])
            assert not any("1.2." in name for name in r["metric_names"])  # no UIDs
            assert not per_study & {round(v, 6) for v in r["metrics"].values() if 0 < v < 1}
    receipts = [e["record"] for e in read_entries(run["validated"].result_dir / "receipts.jsonl")]
    sent = {e["record"]["sha256"] for s in SITES for e in read_entries(run["sites_root"] / s / "ai4hi" / "egress_log.jsonl")
            if e["record"]["task"] == "ai4hi_cross_validate"}
    assert {r["sha256"] for r in receipts} == sent


def test_monitoring_alarms_only_at_the_drifted_site(run):
    rec = run["monitored"].record
    assert run["monitored"].ok, rec
    drift = rec["drift"]
    assert drift["hospital-2"]["alarm"] and "intensity_mean" in drift["hospital-2"]["triggered"]
    assert not drift["hospital-1"]["alarm"], drift["hospital-1"]
    for report in drift.values():
        assert report["n_reference"] == 60 and report["n_current"] == 60
        assert {"intensity_mean", "manufacturer", "score", "embedding_mmd"} <= set(report["tests"])

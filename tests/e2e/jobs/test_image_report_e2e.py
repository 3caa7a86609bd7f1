"""End-to-end (real NVFlare simulator): image-report contrastive pretraining (``task: pretrain``,
``method: image_report``) at three sites with client-level DP and secure aggregation.

Checks that the job completes, that each site booked its client-level spend in its ledger, that
the server wrote the image encoder as a backbone whose card states client-level (not patient-level)
DP and which the adaptation trainer loads by its sha256, and that nothing of a report — sentences,
words, study and image UIDs — is in any site's egress log or in any file on the server side.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai4hi_sdk.audit.hash_chain import read_entries, verify_chain
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.foundation.checkpoint import load_backbone
from ai4hi_sdk.foundation.image_report import AGGREGATE_METRICS
from ai4hi_sdk.jobs.simulate import simulate
from tests.e2e.jobs.test_weak_labels_e2e import _leaks, _secrets, _server_side_files

pytestmark = pytest.mark.e2e
SITES = ("hospital-1", "hospital-2", "hospital-3")
ROUNDS = 2
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_report_e2e")
    for index, site in enumerate(SITES):
        synth_site(root / "data" / site, site_index=index, n_studies=24, seed=31, reports=True)
    spec = JobSpec(
        name="image-report-e2e", task="pretrain", method="image_report",
        model={"backbone": "vit-micro-2d", "pool": "max", "embed_dim": 16, "text_width": 32, "text_layers": 1},
        train={"rounds": ROUNDS, "local_epochs": 1, "batch_size": 8, "lr": 5e-4, "threads": 1, "seed": 3},
        data={"image_size": 32}, min_sites=3,
        privacy={"client_dp": {"clip": 1.0, "noise_multiplier": 2.0},
                 "secure_aggregation": {"clip": 1.0, "max_samples_per_site": 1000}})
    result = simulate(spec, root / "data", root / "ws", timeout_s=400,
                      site_policy=REPO / "site_templates" / "site_policy.image_report.yaml")
    return {"root": root, "result": result}


def test_the_job_completes_and_each_site_booked_client_level_dp(run):
    result, ws = run["result"], run["root"] / "ws"
    assert result.ok, (result.metrics, (ws / "simulate.log").read_text()[-3000:])
    assert [r["status"] for r in result.metrics["rounds"]] == ["completed"] * ROUNDS
    for site in SITES:
        ledger = [e["record"] for e in read_entries(ws / "sites" / site / "ai4hi" / "privacy_ledger.jsonl")]
        spent = [r for r in ledger if r.get("status") == "spent"]
        assert len(spent) == ROUNDS and spent[-1]["epsilon_after"] > spent[0]["epsilon_after"] > 0


def test_the_server_writes_the_image_encoder_with_a_client_level_dp_card(run):
    metrics, ws = run["result"].metrics, run["root"] / "ws"
    backbone = metrics["backbone"]
    weights, provenance = load_backbone(ws / "result" / "backbone", expected_sha256=backbone["sha256"])
    assert weights and not any(name.startswith(("text", "image.")) for name in weights)
    card = provenance.card
    assert "image-report contrastive" in card["method"] and card["differential_privacy"] is False
    assert card["client_level_dp"]["noise_multiplier"] == 2.0 and card["client_level_dp"]["epsilon"] > 0
    assert card["rounds"] == ROUNDS and set(card["sites"]) == set(SITES)


def test_no_report_content_in_any_egress_log_or_server_file(run):
    root, ws = run["root"], run["root"] / "ws"
    secrets: dict[str, set[str]] = {"sentence": set(), "word": set(), "uid": set()}
    for site in SITES:
        for kind, values in _secrets(root / "data" / site).items():
            secrets[kind] |= values
    assert len(secrets["sentence"]) > 40 and len(secrets["word"]) > 10
    logs = [ws / "sites" / site / "ai4hi" / "egress_log.jsonl" for site in SITES]
    assert all(verify_chain(log).ok for log in logs)
    files = logs + _server_side_files(ws)
    assert any(p.name == "backbone.safetensors" for p in files)
    for path in [*files, ws / "simulate.log"]:
        leaks = _leaks(path, secrets)
        assert not leaks, f"{path.relative_to(ws)} holds report content: {json.dumps(leaks)[:300]}"
    sent = [e["record"] for log in logs for e in read_entries(log)]
    # what left by name: the privacy position and the trainer's declared aggregates, nothing per study
    names = {n for r in sent for n in r.get("metric_names", [])}
    declared = {f"{prefix}{m}" for prefix in ("", "val_", "global_val_") for m in {*AGGREGATE_METRICS, "samples"}}
    assert {"dp_epsilon", "dp_delta"} <= names <= declared | {"dp_epsilon", "dp_delta"}
    assert any(r["task"] == "train" for r in sent)

"""End-to-end (real NVFlare simulator, three sites): a validation job with the update policy's
operating point.

* The server chooses the candidate's and the champion's thresholds from the sites' k-merged
  validation histograms: exactly what the same functions give on each site's own validation
  predictions recomputed here, and against the threshold computed centrally from the pooled raw
  validation scores (scikit-learn's ROC curve) it errs on the safe side (sensitivity still >= the
  target) and lies close (measured in bins).
* The test-split validation at each site uses those thresholds and recalibrations (confusion counts
  and calibration equal the central recomputation at them).
* Each site writes its explanation page in its own workspace (mode 0600); the page renders in
  headless Chromium with every image decoded, and nothing image-like is in the sites' egress logs
  or what the server received: only counts of explained images, no tensors, no piece of a page.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from ai4hi_sdk.audit.hash_chain import read_entries, verify_chain
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.validation_spec import OperatingPointSettings, ValidationSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.jobs.validate import run_validation
from ai4hi_sdk.site.validation import EXPLANATIONS_DIR
from ai4hi_sdk.trainers.classification import ClassificationTrainer
from ai4hi_sdk.validation.calibration import apply_calibration, calibration_summary
from ai4hi_sdk.validation.operating_point import (edge_probabilities, operating_point_from_payloads,
                                                  operating_point_payload)
from ai4hi_sdk.validation.site_report import flatten_metrics, unflatten_metrics

pytestmark = pytest.mark.e2e
SITES = ("hospital-1", "hospital-2", "hospital-3")
K = 5  # the sites' policy (a job cannot lower it)
CONFIG = ValidationSpec(min_count=2, drift_permutations=100, timeout_s=240, explanation_images=4,
                        operating_point=OperatingPointSettings(target="sensitivity", value=0.9, recalibration="platt"),
                        net_benefit_thresholds=[0.1, 0.2, 0.3])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("operating_point")
    for i, site in enumerate(SITES):
        synth_site(root / "data" / site, site_index=i, n_studies=160, seed=11)
    spec = JobSpec(name="op-e2e", model={"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
                   train={"rounds": 1, "batch_size": 16, "threads": 1, "lr": 0.01, "augment": False},
                   data={"image_size": 32})
    champion = ClassificationTrainer(spec, device="cpu").initial_state()
    trainer = ClassificationTrainer(spec, site_dir=root / "data" / "hospital-1", site_name="hospital-1", device="cpu")
    candidate = dict(champion)
    for epoch in range(3):  # a candidate that ranks well but is not calibrated
        candidate = {k: candidate[k] + d for k, d in trainer.fit(candidate, epoch).delta.items()}
    sites_root = root / "sites"
    for site in SITES:
        (sites_root / site / "ai4hi").mkdir(parents=True)
        (sites_root / site / "ai4hi" / "site_policy.yaml").write_text(
            f"max_epsilon_per_dataset: 10.0\nrequire_dp: false\nrequire_secure_aggregation: false\nmin_count: {K}\n"
            "allowed_job_kinds: [train, validate, monitor]\n")
    validated = run_validation(spec, CONFIG, root / "data", root / "validate", champion=champion, candidate=candidate,
                               sites_root=sites_root, timeout_s=300)
    assert validated.ok, validated.record
    central = {}
    for site in SITES:
        t = ClassificationTrainer(spec, site_dir=root / "data" / site, site_name=site, device="cpu")
        central[site] = {role: {"val": t.predict_validation(state)[:2], "test": t.predict_test(state)[:2]}
                         for role, state in (("candidate", candidate), ("champion", champion))}
    return {"root": root, "record": validated.record, "result": validated.result_dir, "sites_root": sites_root,
            "central": central}


def test_the_federated_threshold_is_the_pipeline_on_each_sites_own_validation_scores(run):
    ops = run["record"]["operating_points"]
    for role in ("candidate", "champion"):
        payloads = {}
        for site in SITES:
            scores, labels = run["central"][site][role]["val"]
            flat = flatten_metrics(operating_point_payload(scores, labels, split="validation", min_count=K))
            payloads[site] = unflatten_metrics(flat)
        want = operating_point_from_payloads(payloads, "sensitivity", 0.9)
        got = ops[role]["operating_point"]
        assert got["edge"] == want["edge"] and got["threshold"] == pytest.approx(want["threshold"])
        assert got["sites"] == list(SITES) and got["split"] == "validation" and got["k"] == K
        assert not got["exact_counts"] and "validation histograms of 3 site(s)" in ops[role]["source"]


def test_the_federated_threshold_errs_on_the_safe_side_of_the_central_one(run):
    got = run["record"]["operating_points"]["candidate"]["operating_point"]
    scores = np.concatenate([run["central"][s]["candidate"]["val"][0] for s in SITES])
    labels = np.concatenate([run["central"][s]["candidate"]["val"][1] for s in SITES])
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    central = float(thr[np.flatnonzero(tpr >= 0.9 - 1e-12)[0]])  # highest threshold keeping 90 % sensitivity
    edges = edge_probabilities()
    central_bin = int(np.searchsorted(edges, central, side="right") - 1)
    assert got["threshold"] <= central
    assert (scores[labels == 1] >= got["threshold"]).mean() >= 0.9
    # k-merged histograms: the threshold is at most one group of k studies per site below
    below = ((scores >= got["threshold"]) & (scores < central)).sum()
    assert below <= len(SITES) * 2 * K, (below, central_bin - got["edge"])


def test_the_test_split_validation_uses_each_models_operating_point(run):
    ops, rec = run["record"]["operating_points"], run["record"]["validation"]
    for site in SITES:
        rep = rec[site]
        assert rep["meta"]["operating_points_from_server"] == {"candidate": 1, "champion": 1}
        for role, thr_key in (("candidate", "threshold"), ("champion", "champion_threshold")):
            op, cal = ops[role]["operating_point"], ops[role]["calibration"]
            assert rep["meta"][thr_key] == pytest.approx(op["threshold"])
            scores, labels = run["central"][site][role]["test"]
            pred = scores >= op["threshold"]
            got = rep[role]
            assert got["tp"] == int((pred & (labels == 1)).sum()) and got["tn"] == int((~pred & (labels == 0)).sum())
            if cal is not None:
                want = calibration_summary(labels, scores, cal)
                assert got["calibration_summary"]["after"]["ece"] == pytest.approx(want["after"]["ece"], abs=1e-9)
                assert got["ece"] == pytest.approx(want["after"]["ece"], abs=1e-9)
                q = apply_calibration(scores, cal)
                assert got["brier"] == pytest.approx(float(((q - labels) ** 2).mean()), abs=1e-9)
            assert got["net_benefit"]["thresholds"] == [0.1, 0.2, 0.3]
            assert set(got["robustness"]["perturbations"]) >= {"noise_0.05", "contrast_0.7", "blur_1", "resolution_0.5"}


def _pages(run) -> dict[str, Path]:
    out = {}
    for site in SITES:
        found = list((run["sites_root"] / site / EXPLANATIONS_DIR).glob("*/explanations.html"))
        assert len(found) == 1, (site, found)
        out[site] = found[0]
    return out


def test_each_site_keeps_its_explanation_page_and_only_counts_leave(run):
    pages = _pages(run)
    result = run["result"]
    received = (result / "receipts.jsonl").read_text()
    per_study = {round(float(x), 6) for site in SITES for role in ("candidate", "champion")
                 for split in ("val", "test") for x in run["central"][site][role][split][0]}
    for site, page in pages.items():
        assert stat.S_IMODE(page.stat().st_mode) == 0o600
        assert site in page.read_text()
        chunks = [m[100:164] for m in re.findall(r"base64,([A-Za-z0-9+/=]+)", page.read_text())]
        assert len(chunks) == 4 and all(len(c) == 64 for c in chunks)
        log = run["sites_root"] / site / "ai4hi" / "egress_log.jsonl"
        assert verify_chain(log).ok
        text = log.read_text()
        records = [e["record"] for e in read_entries(log)]
        assert [r["task"] for r in records] == ["ai4hi_operating_point", "ai4hi_cross_validate"]
        for r in records:
            assert r["payload_kind"] == "METRICS" and r["tensors"] == [] and r["num_elements"] == 0
            assert not per_study & {round(v, 6) for v in r["metrics"].values() if 0 < v < 1}
        assert len(records[0]["metric_names"]) == 2 * (6 * 322 + 3)  # fixed size: histograms of 2 models
        shown = sorted(n for n in records[1]["metric_names"] if "|explanations|" in n)
        assert shown == ["candidate|explanations|n_images", "candidate|explanations|n_masked",
                         "champion|explanations|n_images", "champion|explanations|n_masked"]
        assert records[1]["metrics"]["candidate|explanations|n_images"] == 4
        for chunk in chunks:  # no piece of any saliency figure left the site or reached the server
            assert chunk not in text and chunk not in received
            assert base64.b64decode(chunk[:60]) not in log.read_bytes()
        assert len(records[1]["metric_names"]) < 2000  # aggregates of a fixed schema, not an image
    assert json.loads(json.dumps(run["record"]["validation"]))  # the server's record: numbers only


_BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_BROWSER is None, reason="headless Chromium not installed (Debian package 'chromium')")
def test_each_sites_explanation_page_renders_with_its_images_decoded(run, tmp_path):
    from tests.reports.test_report_chromium import _PROBE, WIDTH, _chromium

    for site, page in _pages(run).items():
        probe_page = tmp_path / f"{site}-probe.html"
        probe_page.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
                              encoding="utf-8")
        dom = _chromium(tmp_path, f"--window-size={WIDTH},900", "--dump-dom", probe_page.as_uri()).stdout
        found = re.search(r'<pre id="ai4hi-probe">(.*?)</pre>', dom, re.S)
        assert found, f"{site}: the page's load handler never ran in Chromium"
        imgs = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))["imgs"]
        assert len(imgs) == 4
        for img in imgs:  # each figure decoded by the browser and laid out at a readable size
            assert img["complete"] and img["w"] >= 300 and img["h"] >= 100, (site, img)
            assert img["box"][2] >= 300 and img["box"][3] >= 100, (site, img)
            assert "candidate P(positive)" in img["alt"]

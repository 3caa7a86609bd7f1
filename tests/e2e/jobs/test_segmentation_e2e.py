"""End-to-end (real NVFlare simulator): a segmentation job trains 2 rounds at 2 synthetic CT sites
whose series carry the geometry of real pydicom CT series (volumes assembled by position, HD95 in mm
from that geometry),
then the validation job returns, per site, Dice / HD95 / support of the trained model (candidate)
and the untrained one (champion) equal to the same metrics computed centrally from the same
predictions (here, in the test only); training beats the untrained model; no per-case value is in
any payload that left a site or in the result files; the decision engine decides on Dice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ai4hi_sdk.audit.hash_chain import read_entries, verify_chain
from ai4hi_sdk.cli import main as cli_main
from ai4hi_sdk.config.job_spec import load_job_spec
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.data.synth import CT_GEOMETRIES
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.jobs.validate import run_validation
from ai4hi_sdk.trainers.segmentation import SegmentationTrainer
from ai4hi_sdk.validation.decision import decide
from ai4hi_sdk.validation.engine import evidence_from_validation
from ai4hi_sdk.validation.segmentation import segmentation_report
from ai4hi_sdk.validation.segmentation_site import case_dice
from ai4hi_sdk.validation.update_policy import UpdatePolicy

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[3]
SITES = ("hospital-1", "hospital-2")
CONFIG = ValidationSpec(min_count=3, timeout_s=120)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmentation")
    assert cli_main.main(["data", "synth", str(root / "data"), "--sites", "2", "--task", "segmentation",
                          "--studies-per-site", "40", "--seed", "0"]) == 0
    spec = load_job_spec(REPO / "jobs" / "ct_segmentation.yaml").with_overrides(rounds=2, threads=1)
    # the shipped no-DP template, with k lowered for these tiny sites (a handful of validation volumes)
    policy = root / "policy.yaml"
    policy.write_text((REPO / "site_templates" / "site_policy.no_dp.yaml").read_text() + "min_count: 3\n")
    trained = simulate(spec, root / "data", root / "ws", timeout_s=300, site_policy=policy)
    assert trained.ok, trained.metrics
    candidate = torch.load(trained.result_dir / "global_model.pt", map_location="cpu", weights_only=True)
    champion = SegmentationTrainer(spec, device="cpu").initial_state()  # the untrained model
    validated = run_validation(spec, CONFIG, root / "data", root / "validate", champion=champion,
                               candidate=candidate, sites_root=root / "ws" / "sites", timeout_s=300)
    return {"root": root, "spec": spec, "trained": trained, "validated": validated,
            "candidate": candidate, "champion": champion}


@pytest.fixture(scope="module")
def central(run):
    """What each site predicted, recomputed here (test only: masks never leave a real site)."""
    out = {}
    for site in SITES:
        trainer = SegmentationTrainer(run["spec"], site_dir=run["root"] / "data" / site, site_name=site, device="cpu")
        out[site] = {role: trainer.predict_test(run[role]) for role in ("candidate", "champion")}
        out[site]["spacing"] = trainer.test_spacing()
    return out


def test_training_and_validation_complete(run):
    metrics = run["trained"].metrics
    assert [r["status"] for r in metrics["rounds"]] == ["completed", "completed"]
    assert set(metrics["final_validation"]["sites"]) == set(SITES)
    assert all("val_dice" in m for m in metrics["final_validation"]["sites"].values())
    rec = run["validated"].record
    assert run["validated"].ok, rec
    assert set(rec["validation"]) == set(SITES) and not rec["rejected"] and not rec["refused"]


def test_spacing_comes_from_each_site_s_real_series_geometry(run, central):
    """hospital-1 carries pydicom's CT5N geometry (2.5 mm slices, numbering along the slice order),
    hospital-2 CT2's (1.25 mm, numbering against it, masks as .npz placed by their affine): the
    spacing used for HD95 is what the positions say, per site."""
    for k, site in enumerate(SITES):
        geometry = CT_GEOMETRIES[k]
        assert central[site]["spacing"] == (geometry.step, *geometry.pixel_spacing)
        assert run["validated"].record["validation"][site]["meta"]["spacing"] == [geometry.step, *geometry.pixel_spacing]
    assert central[SITES[0]]["spacing"] != central[SITES[1]]["spacing"]


def test_site_dice_and_hd95_equal_central(run, central):
    rec = run["validated"].record
    for site in SITES:
        spacing = central[site]["spacing"]
        assert rec["validation"][site]["meta"]["spacing"] == list(spacing)
        for role in ("candidate", "champion"):
            pred, true, attrs = central[site][role]
            expected = segmentation_report(pred, true, spacing=spacing)
            got = rec["validation"][site][role]
            assert got["n"] == expected["n"] == len(true) > 0
            assert got["dice"] == pytest.approx(expected["dice"], abs=1e-6)
            # independent of MONAI: Dice by hand in numpy
            by_hand = [2 * (p & t).sum() / (p.sum() + t.sum()) for p, t in zip(pred, true) if t.any()]
            assert got["dice"] == pytest.approx(float(np.mean(by_hand)), abs=1e-6)
            assert got["hd95"] == pytest.approx(expected["hd95"], abs=1e-6)
            for key in ("n_dice", "dice_undefined", "n_hd95", "hd95_undefined"):
                assert got[key] == expected[key]
            for attr, block in got["subgroups"].items():
                values = np.array(attrs[attr])
                for group, cell in block["cells"].items():
                    idx = np.flatnonzero(values == group)
                    assert cell["n"] == idx.size >= CONFIG.min_count
                    sub = segmentation_report([pred[i] for i in idx], [true[i] for i in idx], spacing=spacing)
                    if cell.get("dice") is not None:
                        assert cell["dice"] == pytest.approx(sub["dice"], abs=1e-6)
                hidden = {g for g in set(values) if (values == g).sum() < CONFIG.min_count}
                assert not hidden & set(block["cells"]) and block["suppressed_cells"] >= len(hidden)
        d_cand = case_dice(central[site]["candidate"][0], central[site]["candidate"][1])
        d_champ = case_dice(central[site]["champion"][0], central[site]["champion"][1])
        assert rec["validation"][site]["paired"]["delta"] == pytest.approx(np.nanmean(d_cand - d_champ), abs=1e-6)


def test_trained_model_beats_untrained(run):
    for site in SITES:
        rep = run["validated"].record["validation"][site]
        assert rep["candidate"]["dice"] > rep["champion"]["dice"] + 0.1, rep
        assert rep["paired"]["delta"] > 0


def test_no_per_case_value_left_any_site(run, central):
    per_case = set()
    for site in SITES:
        for role in ("candidate", "champion"):
            pred, true, _ = central[site][role]
            for p, t in zip(pred, true):
                one = segmentation_report([p], [t], spacing=central[site]["spacing"])
                per_case |= {round(one[m], 6) for m in ("dice", "hd95") if np.isfinite(one[m]) and one[m] not in (0, 1)}
    assert per_case
    for site in SITES:
        log = run["root"] / "ws" / "sites" / site / "ai4hi" / "egress_log.jsonl"
        assert verify_chain(log).ok
        records = [e["record"] for e in read_entries(log) if e["record"]["task"] == "ai4hi_cross_validate"]
        assert len(records) == 1
        for r in records:
            assert r["payload_kind"] == "METRICS" and r["tensors"] == [] and r["num_elements"] == 0
            assert all(name.split("|")[0] in ("candidate", "champion", "paired", "meta") for name in r["metric_names"])
            assert not any("1.2." in name for name in r["metric_names"])  # no UIDs
            assert not per_case & {round(v, 6) for k, v in r["metrics"].items() if not k.startswith("meta")}
    numbers: list[float] = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k != "meta":  # settings (k, ci, threshold, spacing), not results
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            numbers.append(round(float(x), 6))

    walk(json.loads((run["validated"].result_dir / "validation.json").read_text()))
    assert numbers and not per_case & set(numbers)


def test_decision_engine_decides_on_dice(run):
    evidence, notes = evidence_from_validation(run["validated"].record)
    assert {s.site for s in evidence.sites} == set(SITES) and all(s.metric == "dice" for s in evidence.sites)
    decision = decide(evidence, UpdatePolicy.model_validate({"replace_if": {"min_site_support": 3},
                                                             "retrain_if": {"auroc_below": 0.2}}))
    assert decision.decision in ("replace", "keep", "retrain")
    assert any("Dice" in reason for reason in decision.reasons)

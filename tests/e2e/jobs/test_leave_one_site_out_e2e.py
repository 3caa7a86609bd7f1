"""Leave-one-site-out in the real NVFlare simulator (three tiny sites): for each site, the loop trains
the first candidate's recipe on the other two sites, from the same initial model, and validates it at
the site it never saw against the model trained with every site. The test watches each site's
egress log and privacy ledger around every training job (wrapping the real simulator call): the
held-out site sends nothing and spends nothing for its own leave-one-out model, the others train.
Only aggregates leave in the validation; the model card carries the results and FUTURE-AI's
universality row uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ai4hi_sdk.audit.hash_chain import read_entries
from ai4hi_sdk.config.continuous import load_continuous_spec
from ai4hi_sdk.jobs import continuous
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER
from ai4hi_sdk.privacy.egress import model_sha256
from ai4hi_sdk.reports.report import generate_reports
from ai4hi_sdk.site.egress_guard import EGRESS_LOG

pytestmark = pytest.mark.e2e
LOOP = Path(__file__).resolve().parents[2] / "jobs" / "fixtures" / "tiny_loop.yaml"
SITES = ("hospital-1", "hospital-2", "hospital-3")


def _lines(path: Path) -> list[dict]:
    return [e["record"] for e in read_entries(path)] if path.exists() else []


@pytest.fixture(scope="module")
def loso(tmp_path_factory):
    root = tmp_path_factory.mktemp("loso")
    loop = continuous.ContinuousLoop(load_continuous_spec(LOOP), root / "data", root / "ws", say=lambda _: None)
    loop.setup()
    loop.synth("v1", 0)
    loop.install_site_policy("v1")
    # the model trained with every site: a stand-in for c1 (its own training is the loop's train step,
    # tested in test_continuous_e2e.py); leave-one-site-out retrains its recipe from m0-initial
    m0 = torch.load(loop._model_path("m0-initial"), weights_only=True)
    c1 = {k: v + 0.01 for k, v in m0.items()}
    torch.save(c1, loop._model_path("c1"))
    loop.history["models"]["c1"] = {"sha256": model_sha256(c1), "parent": "m0-initial",
                                    "training": {"job": "stand-in", "sites": list(SITES), "privacy": {}}}
    calls = []
    real = continuous.simulate

    def watched(spec, data_root, workspace, **kw):
        ws = Path(workspace)
        before = {s: (_lines(ws / "sites" / s / EGRESS_LOG), _lines(ws / "sites" / s / PRIVACY_LEDGER)) for s in SITES}
        result = real(spec, data_root, workspace, **kw)
        after = {s: (_lines(ws / "sites" / s / EGRESS_LOG), _lines(ws / "sites" / s / PRIVACY_LEDGER)) for s in SITES}
        calls.append({"sites": kw.get("sites"), "before": before, "after": after, "metrics": result.metrics})
        return result

    continuous.simulate = watched
    try:
        scores = loop.leave_one_site_out("c1", "v1")
    finally:
        continuous.simulate = real
    loop._save_history()
    return {"loop": loop, "calls": calls, "scores": scores, "root": root}


def test_each_site_is_left_out_of_exactly_its_own_model(loso):
    calls = loso["calls"]
    assert len(calls) == 3
    runs = loso["loop"].history["models"]["c1"]["leave_one_site_out_runs"]
    for held, call in zip(SITES, calls):
        others = [s for s in SITES if s != held]
        assert call["sites"] == others and call["metrics"]["sites"] == others
        egress_before, ledger_before = call["before"][held]
        egress_after, ledger_after = call["after"][held]
        assert egress_after == egress_before, f"{held} sent something for its own leave-one-out model"
        assert ledger_after == ledger_before, f"{held} spent privacy budget on its own leave-one-out model"
        for site in others:
            new = call["after"][site][0][len(call["before"][site][0]):]
            assert [r["task"] for r in new].count("train") == 2  # both rounds trained there
            assert len(call["after"][site][1]) > len(call["before"][site][1])  # and were booked
        run = runs[held]
        assert run["training_payloads"][held] == 0 and all(run["training_payloads"][s] > 0 for s in others)
        assert run["trained_at"] == others and run["initial_model"] == "m0-initial"
        assert call["metrics"]["initial_model"]["sha256"] == loso["loop"].history["models"]["m0-initial"]["sha256"]
        state = torch.load(loso["loop"]._model_path(f"c1-without-{held}"), weights_only=True)
        assert run["sha256"] == model_sha256(state)


def test_each_model_is_validated_at_the_site_it_never_saw_with_aggregates_only(loso):
    loop = loso["loop"]
    runs = loop.history["models"]["c1"]["leave_one_site_out_runs"]
    record_name = loop.history["leave_one_site_out"][0]["record"]
    record = json.loads((loop.report / record_name).read_text())
    assert set(record["validation"]) == set(SITES) == set(loso["scores"])
    for held in SITES:
        assert record["candidate_sha256_by_site"][held] == runs[held]["sha256"]
        rep = record["validation"][held]
        assert loso["scores"][held] == {"score": rep["candidate"]["auroc"], "full_score": rep["champion"]["auroc"]}
        last = _lines(loop.ws / "sites" / held / EGRESS_LOG)[-1]
        assert last["task"] == "ai4hi_cross_validate" and last["payload_kind"] == "METRICS"
        assert last["tensors"] == [] and last["num_elements"] == 0


def test_the_model_card_carries_leave_one_site_out(loso):
    loop = loso["loop"]
    out = generate_reports(loop.report)
    card = json.loads(Path(out["model_cards"]["c1"]["json"]).read_text())
    assert card["leave_one_site_out"] == loso["scores"]
    row = next(r for r in card["future_ai"] if r["evidence"].startswith("leave-one-site-out"))
    assert row["status"] in ("passed", "failed") and all(s in row["detail"] for s in SITES)
    md = Path(out["model_cards"]["c1"]["markdown"]).read_text()
    assert "## Leave-one-site-out" in md

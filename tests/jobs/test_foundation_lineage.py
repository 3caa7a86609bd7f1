"""A continuous-loop candidate can adapt a backbone: its lineage (backbone sha256 -> adapter ->
deployed version) goes into the loop's history, into every decision it signs, and into its model
card. The simulator is the continuous tests' stand-in (``tests/jobs/test_continuous.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ai4hi_sdk.audit.hash_chain import read_entries
from ai4hi_sdk.config.continuous import load_continuous_spec
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.foundation.checkpoint import sha256_file
from ai4hi_sdk.foundation.provenance import export_pretrained_backbone
from ai4hi_sdk.foundation.trainers import MAEPretrainTrainer
from ai4hi_sdk.jobs import continuous
from ai4hi_sdk.jobs.lineage import backbone_lineage
from ai4hi_sdk.reports.lineage import card_lineage, lineage_markdown
from ai4hi_sdk.reports.report import model_card, model_card_markdown
from tests.jobs.test_continuous import FakeSimulator

REPO = Path(__file__).resolve().parents[2]


def make_backbone(folder: Path) -> str:
    spec = JobSpec(name="pre", task="pretrain", data={"image_size": 32})
    export_pretrained_backbone(MAEPretrainTrainer(spec, device="cpu").mae_state(), "vit-micro-2d", folder,
                               site_images={"hospital-1": 5}, rounds=1, local_epochs=1, version="cxr-mae-7")
    return sha256_file(folder / "backbone.safetensors")


def loop_on_backbone(tmp_path: Path) -> tuple[continuous.ContinuousLoop, str]:
    sha = make_backbone(tmp_path / "jobs" / "backbone")
    job = {"name": "cxr-ffa", "trainer": "ai4hi_sdk.foundation.trainers:BackboneClassificationTrainer",
           "model": {"checkpoint": "backbone", "adaptation": {"mode": "ffa_lora", "rank": 2}},
           "data": {"image_size": 32}, "train": {"rounds": 1, "batch_size": 8}}
    (tmp_path / "jobs" / "ffa.yaml").write_text(yaml.safe_dump(job))
    loop = yaml.safe_load((REPO / "jobs" / "continuous.yaml").read_text())
    loop.update(job=str(tmp_path / "jobs" / "ffa.yaml"), policy=str(REPO / "jobs" / "update_policy.yaml"))
    if loop.get("site_policy"):  # paths in the loop file are relative to it: this copy lives elsewhere
        loop["site_policy"] = str((REPO / "jobs" / loop["site_policy"]).resolve())
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(loop))
    run = continuous.ContinuousLoop(load_continuous_spec(tmp_path / "loop.yaml"), tmp_path / "data",
                                    tmp_path / "ws", say=lambda _: None)
    run.setup()
    return run, sha


def test_lineage_of_a_job_spec(tmp_path):
    sha = make_backbone(tmp_path / "bb")
    spec = JobSpec(name="x", model={"checkpoint": str(tmp_path / "bb"), "adaptation": "lora"})
    assert backbone_lineage(spec) == {"backbone_sha256": sha, "backbone_kind": "pretrained",
                                      "backbone_version": "cxr-mae-7", "backbone_source": "ai4hi federated pretraining",
                                      "backbone_arch": "vit-micro-2d", "adaptation": "lora"}
    assert backbone_lineage(JobSpec(name="x", model={"checkpoint": str(tmp_path / "bb")}))["adaptation"] == "ffa_lora"
    assert backbone_lineage(JobSpec(name="x")) is None


def test_the_loop_records_the_lineage_in_history_decisions_and_cards(tmp_path, monkeypatch):
    loop, sha = loop_on_backbone(tmp_path)
    monkeypatch.setattr(continuous, "simulate", FakeSimulator())
    models = loop.history["models"]
    assert models["m0-initial"]["lineage"]["backbone_sha256"] == sha
    # the loop's models are the exchanged state: adapters and head, never the backbone
    m0 = torch.load(loop._model_path("m0-initial"), weights_only=True)
    assert m0 and all(".lora_B." in n or n.startswith("head.") for n in m0)
    c1 = loop.train("v1")
    assert models[c1]["lineage"] == {**models["m0-initial"]["lineage"]}
    loop.champion = loop.deployed = c1  # as after a REPLACE decision, then a decision that keeps it deployed
    loop.last_evidence = None
    loop.decide("after training", c1, validation={"validation": {}})
    entries = [e["record"]["body"] for e in read_entries(loop.report / continuous.DECISION_LOG)]
    signed = entries[-1]  # the signed body: backbone -> adapter (the model decided on) -> deployed or not
    assert signed["extra"]["backbone_lineage"]["backbone_sha256"] == sha
    assert signed["extra"]["backbone_lineage"]["adaptation"] == "ffa_lora"
    assert signed["lineage"]["model_sha256"] == models[c1]["sha256"]  # the adapter's hash
    card = model_card(loop.history, {}, c1)
    lineage = card["lineage"]
    assert lineage["backbone_sha256"] == sha and lineage["adapter_sha256"] == models[c1]["sha256"]
    assert lineage["parent"] == "m0-initial"
    decision = loop.history["steps"][-1]
    assert lineage["deployed"] == [{"stage": "after training", "log_seq": decision["log_seq"],
                                    "decision": decision["decision"]}]
    text = model_card_markdown(card)
    assert f"backbone: `{sha}`" in text and f"adapter: `{models[c1]['sha256']}` (ffa_lora" in text
    assert f"deployed as `{c1}`" in text


def test_a_model_without_a_backbone_has_no_lineage():
    history = {"models": {"m": {"sha256": "a" * 64}}, "steps": []}
    assert card_lineage(history, "m") is None and lineage_markdown(None) == []
    history["models"]["m"]["lineage"] = {"backbone_sha256": "b" * 64, "adaptation": "lora"}
    text = "\n".join(lineage_markdown(card_lineage(history, "m")))
    assert "deployed as `m`: not deployed" in text and json.dumps(card_lineage(history, "m"))

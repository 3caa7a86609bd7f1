"""Foundation jobs end to end in the real NVFlare simulator (synthetic DICOM sites, labelled or not):

* ``task: pretrain``: the masked-reconstruction loss of the global model falls; the job's output is
  a backbone whose weights are the global MAE's encoder (rebuilt here independently), with a card
  stating each site's train-split images (counted here independently), rounds, epochs and sha256;
* fine-tuning that backbone with ``ffa_lora``: the job carries only the sha256, each site uses its
  own store copy; a site whose copy differs by one byte refuses round 0 with the reason and sends
  nothing; the egress logs of the others list only adapter and head tensors, the global model
  holds only those, and it equals FedAvg computed in this process;
* the same job under secure aggregation equals that plain FedAvg of the adapters within the
  quantisation bound the server states, and its masked layout is the adapters' and head's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ai4hi_sdk.audit.hash_chain import read_entries
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_consortium
from ai4hi_sdk.foundation.checkpoint import load_backbone, sha256_file
from ai4hi_sdk.foundation.datasets import load_pretrain_images
from ai4hi_sdk.foundation.mae import encoder_state
from ai4hi_sdk.foundation.trainers import BackboneClassificationTrainer, MAEPretrainTrainer
from ai4hi_sdk.jobs.builder import lead_initial_state
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.site.backbones import install_backbone
from ai4hi_sdk.site.secagg_client import masked_metric_names
from ai4hi_sdk.trainers.state import exchange_size

pytestmark = pytest.mark.e2e
SITES = ["hospital-1", "hospital-2", "hospital-3", "hospital-4"]
TAMPERED = "hospital-4"
NO_DP_POLICY = Path(__file__).resolve().parents[2] / "jobs" / "fixtures" / "policy_without_dp.yaml"
TRAIN = {"local_epochs": 2, "batch_size": 8, "optimizer": "adam", "threads": 1, "augment": False, "seed": 0}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("foundation_e2e")
    synth_consortium(root / "data", sites=len(SITES), studies_per_site=40, seed=6, labelled_fraction=0.5,
                     finding="subtle")
    policy = yaml.safe_load(NO_DP_POLICY.read_text())
    (root / "policy.yaml").write_text(yaml.safe_dump({**policy, "allowed_job_kinds": ["train", "pretrain",
                                                                                      "validate"]}))
    return root


def pretrain_spec() -> JobSpec:
    return JobSpec(name="mae-e2e", task="pretrain", model={"backbone": "vit-micro-2d"}, data={"image_size": 32},
                   train={**TRAIN, "rounds": 3, "lr": 0.002}, min_sites=2)


@pytest.fixture(scope="module")
def pretrained(root):
    result = simulate(pretrain_spec(), root / "data", root / "ws-pretrain", sites=SITES[:3], timeout_s=300,
                      site_policy=root / "policy.yaml")
    assert result.ok, (result.metrics.get("reason"), (root / "ws-pretrain" / "simulate.log").read_text()[-3000:])
    backbone = root / "backbone"  # kept by the lead before the workspace is reused
    shutil.copytree(result.result_dir / "backbone", backbone)
    return result, backbone


def test_pretraining_loss_falls(pretrained):
    result, _ = pretrained
    first = result.metrics["rounds"][0]["sites"]  # each site's loss of the seeded model it received
    initial = sum(m["global_val_loss"] * m["global_val_samples"] for m in first.values()) / sum(
        m["global_val_samples"] for m in first.values())
    final = result.metrics["final_validation"]["weighted_mean"]["val_loss"]
    assert final < 0.9 * initial, (initial, final)


def test_pretraining_outputs_the_global_encoder_with_its_card(pretrained, root):
    result, backbone = pretrained
    sha = sha256_file(backbone / "backbone.safetensors")
    assert result.metrics["backbone"]["sha256"] == sha and result.metrics["backbone"]["folder"] == "backbone"
    weights, provenance = load_backbone(backbone, expected_sha256=sha)
    # independent rebuild: the seeded MAE with the global model's exchanged tensors
    global_state = torch.load(result.result_dir / "global_model.pt", weights_only=True)
    seeded = MAEPretrainTrainer(pretrain_spec(), device="cpu")
    assert set(global_state) == set(seeded.exchanged_names())
    assert "cls_token" not in global_state and "mask_tokens" not in global_state  # frozen: never exchanged
    expected = encoder_state({**seeded.mae_state(), **global_state}, 3)
    assert set(weights) == set(expected) and all(torch.equal(weights[k], expected[k].float()) for k in expected)
    card = provenance.card
    counts = {s: load_pretrain_images(root / "data" / s, modalities=["CR", "DX"], image_size=32).counts()
              for s in SITES[:3]}
    assert card["sites"] == {s: {"images": counts[s]["train"], "epsilon": None} for s in SITES[:3]}
    assert sum(c["unlabelled_train"] for c in counts.values()) > 0  # unlabelled studies were pretrained on
    assert card["images_total"] == sum(c["train"] for c in counts.values())
    assert card["rounds"] == 3 and card["epochs_total"] == 6 and card["sha256"] == sha
    assert card["differential_privacy"] is False and card["final_loss"] == pytest.approx(
        result.metrics["final_validation"]["weighted_mean"]["val_loss"])
    assert (backbone / "BACKBONE_CARD.md").read_text().startswith("# Backbone card: vit-micro-2d")
    for site in SITES[:3]:  # what left the sites: the MAE's trainable tensors, nothing else
        for record in (e["record"] for e in read_entries(result.result_dir / "egress" / f"{site}.jsonl")):
            if record.get("task") == "train":
                assert {t["name"] for t in record["tensors"]} == set(global_state)


def ffa_spec(backbone: Path, **privacy) -> JobSpec:
    return JobSpec(name="ffa-e2e", trainer="ai4hi_sdk.foundation.trainers:BackboneClassificationTrainer",
                   model={"checkpoint": str(backbone), "adaptation": {"mode": "ffa_lora", "rank": 2}},
                   data={"image_size": 32}, train={**TRAIN, "rounds": 1, "lr": 0.01}, min_sites=2, privacy=privacy)


@pytest.fixture(scope="module")
def plain(root, pretrained):
    """Four sites; the last holds a copy of the backbone that differs by one byte."""
    _, backbone = pretrained
    installed = install_backbone(backbone, root / "ws-ffa" / "sites" / TAMPERED)
    weights = installed.folder / "backbone.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-7] ^= 0x01
    weights.write_bytes(bytes(raw))
    result = simulate(ffa_spec(backbone), root / "data", root / "ws-ffa", sites=SITES, timeout_s=300,
                      site_policy=root / "policy.yaml")
    assert result.ok, (result.metrics.get("reason"), (root / "ws-ffa" / "simulate.log").read_text()[-3000:])
    return result, torch.load(result.result_dir / "global_model.pt", weights_only=True)


def test_a_site_whose_backbone_differs_by_one_byte_refuses(plain, pretrained):
    result, _ = plain
    sha = sha256_file(pretrained[1] / "backbone.safetensors")
    assert result.metrics["site_backbones"][TAMPERED].startswith("kept")
    (refusal,) = result.metrics["refused"]
    assert refusal["site"] == TAMPERED and refusal["round"] == 0
    assert f"but the job expects {sha}" in refusal["reason"] and "<site workspace>" in refusal["reason"]
    assert sorted(result.metrics["rounds"][0]["weights"]) == SITES[:3]
    sent = [e["record"] for e in read_entries(result.result_dir / "egress" / f"{TAMPERED}.jsonl")]
    assert sent and all(r.get("refusal") and not r.get("tensors") for r in sent)


def test_only_adapters_and_head_travel_and_the_average_is_fedavg(plain, pretrained, root):
    result, model = plain
    spec = ffa_spec(pretrained[1])
    lead = BackboneClassificationTrainer(spec, device="cpu")
    names = set(lead.exchanged_names())
    assert names == {"head.weight", "head.bias"} | {n for n in lead.model.state_dict() if ".lora_B." in n}
    assert set(model) == names  # the server never held, nor sent, the backbone
    for site in SITES[:3]:
        records = [e["record"] for e in read_entries(result.result_dir / "egress" / f"{site}.jsonl")]
        train = [r for r in records if r.get("task") == "train"]
        assert train and all({t["name"] for t in r["tensors"]} == names for r in train)
    assert result.metrics["exchange"] == exchange_size(lead.model, lead.exchanged_names())
    assert result.metrics["base_checkpoint"]["sha256"] == sha256_file(pretrained[1] / "backbone.safetensors")
    # independent reference: FedAvg of the three sites' fits in this process, from the lead's round-0 state
    start = lead_initial_state(spec)
    updates = {s: BackboneClassificationTrainer(spec, site_dir=root / "data" / s, site_name=s, device="cpu").fit(
        start, 0) for s in SITES[:3]}
    total = sum(u.num_samples for u in updates.values())
    assert result.metrics["rounds"][0]["weights"] == {s: u.num_samples for s, u in updates.items()}
    for name, value in start.items():
        reference = value + sum(u.num_samples * u.delta[name] for u in updates.values()) / total
        assert torch.allclose(model[name], reference, rtol=1e-5, atol=1e-6), name
    assert any(not torch.equal(model[n], start[n]) for n in names if ".lora_B." in n)


@pytest.fixture(scope="module")
def secure(root, pretrained, plain):
    _, backbone = pretrained
    spec = ffa_spec(backbone, secure_aggregation={"clip": 1.0, "max_samples_per_site": 40})
    result = simulate(spec, root / "data", root / "ws-ffa-secure", sites=SITES[:3], timeout_s=300,
                      site_policy=root / "policy.yaml")
    assert result.ok, (result.metrics.get("reason"), (root / "ws-ffa-secure" / "simulate.log").read_text()[-3000:])
    return result, torch.load(result.result_dir / "global_model.pt", weights_only=True)


def test_ffa_lora_under_secure_aggregation_equals_plain_fedavg_of_the_adapters(secure, plain, pretrained):
    (s_result, s_model), (p_result, p_model) = secure, plain
    bound = s_result.metrics["rounds"][0]["quantisation_error_bound"]
    tolerance = bound + 2 * float(np.finfo(np.float32).eps) * max(v.abs().max().item() for v in s_model.values())
    assert 0 < bound < 1e-5
    assert set(s_model) == set(p_model)
    start = lead_initial_state(ffa_spec(pretrained[1]))
    moved = max((s_model[k] - start[k]).abs().max().item() for k in s_model)
    assert moved > 100 * tolerance  # the round moved the adapters far more than the tolerance
    assert max((s_model[k] - p_model[k]).abs().max().item() for k in s_model) <= tolerance
    assert s_result.metrics["rounds"][0]["total_weight"] == sum(p_result.metrics["rounds"][0]["weights"].values())
    # the masked vector is laid out for the adapters and head only (+ weight and masked metric sums/counts)
    m = len(masked_metric_names(BackboneClassificationTrainer.declared_metrics(), True))
    exchanged = s_result.metrics["exchange"]["elements"]
    assert s_result.metrics["secure_aggregation"]["payload_length"] == exchanged + 1 + 2 * m
    assert exchanged < 0.1 * s_result.metrics["exchange"]["full_model_elements"]

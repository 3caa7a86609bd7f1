"""Foundation jobs on the lead's side (no simulator): the distribution step (the job carries the
backbone's sha256 and the round-0 exchanged state, never the backbone), ``task: pretrain``, the
simulated sites' backbone install, the pretraining job's backbone output from a server record,
the upload size, and the lineage the continuous loop and model cards keep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.checkpoint import load_backbone, sha256_file
from ai4hi_sdk.foundation.job_backbone import export_job_backbone
from ai4hi_sdk.foundation.mae import encoder_state
from ai4hi_sdk.foundation.provenance import export_pretrained_backbone
from ai4hi_sdk.foundation.trainers import BackboneClassificationTrainer, MAEPretrainTrainer
from ai4hi_sdk.jobs.builder import export_job, spec_payload
from ai4hi_sdk.jobs.simulate import install_site_backbones
from ai4hi_sdk.jobs.wire import INITIAL_MODEL_FILE
from ai4hi_sdk.site.backbones import install_backbone, locate_backbone
from ai4hi_sdk.trainers.state import exchange_size

TRAIN = {"rounds": 2, "local_epochs": 2, "batch_size": 8, "lr": 0.002, "optimizer": "adam", "threads": 1}
REPO = Path(__file__).resolve().parents[2]


def mae_trainer(**model) -> MAEPretrainTrainer:
    return MAEPretrainTrainer(JobSpec(name="pre", task="pretrain", model=model, data={"image_size": 32}, train=TRAIN),
                              device="cpu")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    out = tmp_path_factory.mktemp("backbone")
    generator = torch.Generator().manual_seed(5)  # not the seeded initial weights: loading must show
    state = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in mae_trainer().mae_state().items()}
    export_pretrained_backbone(state, "vit-micro-2d", out, site_images={"a": 3}, rounds=1, local_epochs=1)
    return out


def ffa(backbone: Path | None, **model) -> JobSpec:
    return JobSpec(name="ffa", trainer="ai4hi_sdk.foundation.trainers:BackboneClassificationTrainer",
                   model={**({"checkpoint": str(backbone)} if backbone else {}), **model},
                   data={"image_size": 32}, train=TRAIN)


def test_pretrain_task_defaults_to_the_mae_trainer_and_takes_no_labels():
    assert JobSpec(name="p", task="pretrain").trainer == "ai4hi_sdk.foundation.trainers:MAEPretrainTrainer"
    assert JobSpec(name="p", task="pretrain", trainer="ai4hi_sdk.x:Y").trainer == "ai4hi_sdk.x:Y"
    assert JobSpec(name="c").trainer == "ai4hi_sdk.trainers.classification:ClassificationTrainer"
    with pytest.raises(ValueError, match="task: pretrain uses no labels"):
        JobSpec(name="p", task="pretrain", data={"labels_from": "reports", "report_finding": "opacity",
                                                 "labeler_version": "ai4hi-negex-1"})


def test_pretraining_reads_the_jobs_declared_modalities():
    spec = JobSpec(name="p", task="pretrain", data={"image_size": 32, "modalities": ["DX"]})
    trainer = MAEPretrainTrainer(spec, site_dir=".", device="cpu")
    from unittest import mock

    with mock.patch("ai4hi_sdk.foundation.datasets.load_pretrain_images") as load:
        trainer.build_datasets()
    assert load.call_args.kwargs["modalities"] == ["DX"]


def test_the_payload_carries_the_sha256_not_the_path(backbone):
    sha = sha256_file(backbone / "backbone.safetensors")
    payload = spec_payload(ffa(backbone))
    assert payload["model"] == {"checkpoint_sha256": sha}
    assert spec_payload(ffa(backbone, checkpoint_sha256=sha.upper()))["model"]["checkpoint_sha256"] == sha
    relative = ffa(None, checkpoint="bb").model_copy(update={"base_dir": str(backbone.parent)})
    relative = relative.model_copy(update={"model": {"checkpoint": backbone.name}})
    assert spec_payload(relative)["model"]["checkpoint_sha256"] == sha  # resolved from the spec's folder
    with pytest.raises(UserError, match=r"model.checkpoint: .* has sha256 [0-9a-f]{64}, but model.checkpoint_sha256 "
                                        r"says 0{64}"):
        spec_payload(ffa(backbone, checkpoint_sha256="0" * 64))
    with pytest.raises(UserError, match="model.checkpoint_sha256 without model.checkpoint"):
        spec_payload(ffa(None, checkpoint_sha256=sha))
    with pytest.raises(UserError, match="model.checkpoint: .*no backbone.safetensors"):
        spec_payload(ffa(backbone.parent / "missing"))


def test_the_exported_job_ships_the_round0_adapters_not_the_backbone(backbone, tmp_path):
    spec = ffa(backbone, adaptation={"mode": "ffa_lora", "rank": 2})
    job = export_job(spec, tmp_path / "out")
    assert not list(job.rglob("*.safetensors"))
    config = json.loads(next(job.rglob("config_fed_client.json")).read_text())
    assert str(backbone) not in json.dumps(config)
    (shipped,) = list(job.rglob(INITIAL_MODEL_FILE))
    state = torch.load(shipped, weights_only=True)
    lead = BackboneClassificationTrainer(spec, device="cpu")
    assert list(state) == lead.exchanged_names()  # adapters and head only
    assert all(".lora_B." in n or n.startswith("head.") for n in state)
    assert all(torch.equal(state[k], v) for k, v in lead.initial_state().items())


def test_partial_fine_tuning_starts_from_the_backbones_blocks(backbone, tmp_path):
    """The trainable blocks' round-0 values come from the checkpoint, which the server does not hold:
    the shipped initial state carries them."""
    spec = ffa(backbone, adaptation={"mode": "partial", "blocks": 1})
    (shipped,) = list(export_job(spec, tmp_path / "out").rglob(INITIAL_MODEL_FILE))
    state = torch.load(shipped, weights_only=True)
    weights, _ = load_backbone(backbone)
    last = [n for n in state if n.startswith("encoder.blocks.2.")]
    assert last and all(torch.equal(state[n], weights[n[len("encoder."):]]) for n in last)
    unloaded = BackboneClassificationTrainer(ffa(None, adaptation={"mode": "partial", "blocks": 1}), device="cpu")
    assert not all(torch.equal(state[n], unloaded.initial_state()[n]) for n in last)


def test_simulated_sites_get_the_backbone_and_keep_their_own_copy(backbone, tmp_path):
    sha = sha256_file(backbone / "backbone.safetensors")
    install_backbone(backbone, tmp_path / "site-b")
    damaged = tmp_path / "site-b" / "ai4hi" / "backbones" / sha / "backbone.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-1] + bytes([damaged.read_bytes()[-1] ^ 1]))
    actions = install_site_backbones(ffa(backbone), tmp_path, ["site-a", "site-b"])
    assert actions["site-a"].startswith("installed") and actions["site-b"].startswith("kept")
    assert locate_backbone(tmp_path / "site-a", sha)
    with pytest.raises(Exception, match="but the job expects"):
        locate_backbone(tmp_path / "site-b", sha)  # the site's state is its own: the site refuses, not the runner
    assert install_site_backbones(JobSpec(name="plain"), tmp_path, ["site-a"]) == {}


def test_exchange_size_counts_against_the_unadapted_model(backbone):
    trainer = BackboneClassificationTrainer(ffa(backbone, adaptation={"mode": "ffa_lora", "rank": 2}), device="cpu")
    names = trainer.exchanged_names()
    size = exchange_size(trainer.model, names)
    plain = BackboneClassificationTrainer(ffa(backbone, adaptation="full"), device="cpu").model
    whole = sum(t.numel() for t in plain.state_dict().values() if t.is_floating_point())
    sent = sum(trainer.model.state_dict()[n].numel() for n in names)
    assert size["full_model_elements"] == whole and size["elements"] == sent and size["bytes"] == 4 * sent
    assert size["percent"] == pytest.approx(100 * sent / whole) and size["percent"] < 10


def record_plain(eps=(2.5, 3.0)) -> dict:
    return {"rounds": [
        {"round": 0, "status": "completed", "weights": {"a": 10, "b": 14},
         "sites": {"a": {"dp_epsilon": 1.0, "dp_delta": 1e-5}, "b": {"dp_epsilon": 1.5, "dp_delta": 1e-5}}},
        {"round": 1, "status": "completed", "weights": {"a": 10, "b": 14},
         "sites": {"a": {"dp_epsilon": eps[0], "dp_delta": 1e-5}, "b": {"dp_epsilon": eps[1], "dp_delta": 1e-5}}},
        {"round": 2, "status": "abandoned"}],
        "final_validation": {"weighted_mean": {"val_loss": 0.42}}}


def test_the_pretraining_job_writes_its_backbone_and_card(tmp_path):
    trainer = mae_trainer(masking_ratio=0.6)
    names = trainer.exchanged_names()
    generator = torch.Generator().manual_seed(3)
    state = {n: v + 0.01 * torch.randn(v.shape, generator=generator) for n, v in trainer.initial_state().items()}
    out = export_job_backbone(trainer, state, record_plain(), tmp_path / "backbone", job_id="job-7")
    weights, prov = load_backbone(tmp_path / "backbone", expected_sha256=out["sha256"])
    assert out["sha256"] == sha256_file(tmp_path / "backbone" / "backbone.safetensors")
    # the encoder of the global model: the exchanged tensors from the state, the rest as seeded
    reference = mae_trainer(masking_ratio=0.6)
    full = {**reference.mae_state(), **state}
    expected = encoder_state(full, 3)
    assert set(weights) == set(expected) and all(torch.equal(weights[k], expected[k]) for k in expected)
    assert set(names) >= {n for n in state}  # only exchanged tensors came from the state
    card = prov.card
    assert card["sites"] == {"a": {"images": 10, "epsilon": 2.5}, "b": {"images": 14, "epsilon": 3.0}}
    assert card["images_total"] == 24 and card["rounds"] == 2 and card["epochs_total"] == 4
    assert card["epsilon_max"] == 3.0 and card["delta"] == 1e-5 and card["final_loss"] == 0.42
    assert card["masking_ratio"] == 0.6 and card["job_id"] == "job-7" and card["sha256"] == out["sha256"]
    assert card["version"].startswith("pre-") and out["version"] == card["version"]
    assert "| a | 10 | 2.50 |" in (tmp_path / "backbone" / "BACKBONE_CARD.md").read_text()


def test_under_secure_aggregation_the_card_states_only_the_total(tmp_path):
    record = {"rounds": [{"round": 0, "status": "completed", "total_weight": 31,
                          "sites": {"a": {"dp_epsilon": 1.0, "dp_delta": 1e-5}, "b": {}}}]}
    out = export_job_backbone(mae_trainer(), mae_trainer().initial_state(), record, tmp_path / "bb", job_id="j")
    card = out["card"]
    assert card["images_total"] == 31 and card["sites"]["a"] == {"images": None, "epsilon": 1.0}
    assert card["sites"]["b"] == {"images": None, "epsilon": None}
    assert "not revealed (secure aggregation)" in (tmp_path / "bb" / "BACKBONE_CARD.md").read_text()
    with pytest.raises(ValueError, match="no completed round"):
        export_job_backbone(mae_trainer(), mae_trainer().initial_state(), {"rounds": []}, tmp_path / "x", job_id="j")


def test_an_image_report_pretraining_job_writes_its_image_encoder_with_client_level_dp(tmp_path):
    from ai4hi_sdk.foundation.contrastive import image_backbone_state
    from ai4hi_sdk.foundation.image_report import ImageReportTrainer

    spec = JobSpec(name="ir", task="pretrain", method="image_report", data={"image_size": 32}, train=TRAIN,
                   model={"backbone": "vit-micro-2d", "embed_dim": 16, "text_width": 32, "text_layers": 1},
                   privacy={"client_dp": {"clip": 1.0, "noise_multiplier": 2.0}, "secure_aggregation": {}},
                   min_sites=3)
    assert spec.trainer == "ai4hi_sdk.foundation.image_report:ImageReportTrainer"  # this task's default
    trainer = ImageReportTrainer(spec, device="cpu")
    generator = torch.Generator().manual_seed(4)
    state = {n: v + 0.01 * torch.randn(v.shape, generator=generator) for n, v in trainer.initial_state().items()}
    record = {"rounds": [{"round": 0, "status": "completed", "total_weight": 40,
                          "sites": {"a": {"dp_epsilon": 3.1, "dp_delta": 1e-5}, "b": {"dp_epsilon": 4.0,
                                                                                       "dp_delta": 1e-5}}}]}
    out = export_job_backbone(ImageReportTrainer(spec, device="cpu"), state, record, tmp_path / "bb", job_id="j")
    weights, prov = load_backbone(tmp_path / "bb", expected_sha256=out["sha256"])
    # the image tower of the global model: exchanged tensors from the state, frozen ones as seeded
    reference = ImageReportTrainer(spec, device="cpu")
    expected = image_backbone_state({**reference.model.state_dict(), **state})
    assert all(torch.equal(weights[k], expected[k]) for k in expected) and not any(k.startswith("text") for k in weights)
    card = prov.card
    assert "image-report contrastive" in card["method"] and card["differential_privacy"] is False
    assert card["sites"]["b"] == {"images": None, "epsilon": None}  # no patient-level epsilon
    assert card["client_level_dp"] == {"clip": 1.0, "noise_multiplier": 2.0, "epsilon": 4.0, "delta": 1e-5}
    page = (tmp_path / "bb" / "BACKBONE_CARD.md").read_text()
    assert "no patient-level DP; client-level DP" in page and "epsilon 4.00 at delta 1e-05" in page


def test_example_jobs_load_and_build(tmp_path):
    from ai4hi_sdk.jobs.spec import load_checked_job_spec

    pretrain = load_checked_job_spec(REPO / "jobs" / "cxr_mae_pretrain.yaml")
    assert pretrain.task == "pretrain" and pretrain.privacy.dp_sgd is not None
    adapt = load_checked_job_spec(REPO / "jobs" / "cxr_ffa_lora.yaml")
    assert adapt.model["adaptation"]["mode"] == "ffa_lora" and "checkpoint" not in adapt.model
    for spec in (pretrain, adapt):
        assert export_job(spec, tmp_path / spec.name).is_dir()

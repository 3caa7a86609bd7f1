"""Foundation trainers through SiteTrainer.fit() and the site runtime on real synthetic DICOM sites (no NVFlare):
pretraining data = every train-split image, labelled or not; the MAE loss falls; DP-SGD rounds
spend budget; the classifier starts from a verified checkpoint and moves only its trainable part."""

from __future__ import annotations

import pytest
import torch
import yaml

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.scan import scan_directory
from ai4hi_sdk.data.splits import assign_split
from ai4hi_sdk.data.synth import synth_consortium
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.checkpoint import sha256_file
from ai4hi_sdk.foundation.provenance import export_pretrained_backbone
from ai4hi_sdk.foundation.trainers import BackboneClassificationTrainer, MAEPretrainTrainer
from ai4hi_sdk.privacy.dp.ledger import PrivacyLedger
from ai4hi_sdk.config.site_policy import SITE_POLICY

TRAIN = {"rounds": 3, "local_epochs": 2, "batch_size": 8, "lr": 0.002, "optimizer": "adam", "threads": 1,
         "augment": False}


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm_sites")
    synth_consortium(root, sites=2, studies_per_site=40, seed=2, labelled_fraction=0.5, finding="subtle")
    return root


def _spec(trainer: str, model: dict | None = None, **privacy) -> JobSpec:
    return JobSpec.model_validate({
        "name": "fm", "trainer": f"ai4hi_sdk.foundation.trainers:{trainer}", "model": model or {},
        "data": {"image_size": 32}, "train": TRAIN, "privacy": privacy})


def _workspace(tmp_path):
    path = tmp_path / SITE_POLICY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"max_epsilon_per_dataset": 50.0, "require_secure_aggregation": False}))
    return tmp_path


def _apply(state, delta):
    return {k: state[k] + delta[k] for k in state}


def test_pretraining_uses_every_train_split_image_labelled_or_not(sites):
    site = sites / "hospital-1"
    trainer = MAEPretrainTrainer(_spec("MAEPretrainTrainer"), site_dir=site, site_name="hospital-1", device="cpu")
    data = trainer.datasets
    splits = [assign_split(r.study_instance_uid) for r in scan_directory(site / "dicom").instances]
    assert len(data.train) == splits.count("train") and len(data.val) == splits.count("val")
    assert data.test_excluded == splits.count("test") > 0
    counts = data.counts()
    assert counts["labelled_train"] > 0 and counts["unlabelled_train"] > 0  # half the studies carry no label
    (image,) = data.train[0]
    assert image.shape == (1, 32, 32)


def test_mae_loss_falls_and_frozen_tokens_never_move(sites):
    trainer = MAEPretrainTrainer(_spec("MAEPretrainTrainer"), site_dir=sites / "hospital-1", site_name="hospital-1",
                                 device="cpu")
    state = trainer.initial_state()
    names = set(trainer.exchanged_names())
    assert "cls_token" not in names and "mask_tokens" not in names and "decoder_pred.weight" in names
    first = None
    for round_index in range(3):
        update = trainer.fit(state, round_index)
        assert set(update.metrics) <= MAEPretrainTrainer.declared_metrics()
        first = first if first is not None else update.metrics["global_val_loss"]
        for name, delta in update.delta.items():
            assert (name in names) or torch.count_nonzero(delta) == 0, name
        state = _apply(state, update.delta)
    assert update.metrics["val_loss"] < 0.9 * first


def test_mae_dp_sgd_round_spends_the_site_budget(sites, tmp_path):
    """Through the site runtime, as at a site: the pretraining round is booked in the site's ledger."""
    from ai4hi_sdk.site.runtime import SiteRuntime
    from ai4hi_sdk.trainers.state import exchanged_state

    spec = _spec("MAEPretrainTrainer", dp_sgd={"noise_multiplier": 1.0, "max_grad_norm": 1.0})
    ws = _workspace(tmp_path)
    runtime = SiteRuntime(spec, site_name="hospital-2", job_id="pretrain-1", workspace=ws, data_root=str(sites),
                          device="cpu")
    start = exchanged_state(runtime.model, runtime.exchanged_names)
    out = runtime.train(start, 0, 2)
    assert out.metrics["dp_epsilon"] > 0 and out.metrics["dp_noise_multiplier"] == 1.0
    # frozen tokens are not exchanged at all (only the trainable tensors leave)
    assert "mask_tokens" not in out.params and "cls_token" not in out.params
    assert set(out.params) == set(runtime.trainer.exchanged_names())
    assert out.params["decoder_pred.weight"].any()
    records = PrivacyLedger(ws / "ai4hi" / "privacy_ledger.jsonl").records()
    assert [r["status"] for r in records] == ["spent"] and records[0]["job_id"] == "pretrain-1"


@pytest.fixture(scope="module")
def backbone_dir(sites, tmp_path_factory):
    trainer = MAEPretrainTrainer(_spec("MAEPretrainTrainer"), site_dir=sites / "hospital-1", site_name="hospital-1",
                                 device="cpu")
    state = trainer.initial_state()
    update = trainer.fit(state, 0)
    trainer.model.load_state_dict(_apply(state, update.delta), strict=False)
    out = tmp_path_factory.mktemp("backbone")
    export_pretrained_backbone(trainer.mae_state(), "vit-micro-2d", out,
                               site_images={"hospital-1": len(trainer.datasets.train)},
                               rounds=1, local_epochs=2)
    return out


def test_classifier_starts_from_the_checkpoint_and_moves_only_adapters_and_head(sites, backbone_dir):
    from ai4hi_sdk.foundation.checkpoint import load_backbone

    sha = sha256_file(backbone_dir / "backbone.safetensors")
    spec = _spec("BackboneClassificationTrainer", {"checkpoint": str(backbone_dir), "checkpoint_sha256": sha,
                                                   "adaptation": {"mode": "ffa_lora", "rank": 2}})
    trainer = BackboneClassificationTrainer(spec, site_dir=sites / "hospital-1", site_name="hospital-1", device="cpu")
    state = trainer.initial_state()
    backbone, _ = load_backbone(backbone_dir)
    full = trainer.model.state_dict()
    assert all(torch.equal(full[f"encoder.{k}"], v.float()) for k, v in backbone.items())
    names = set(trainer.exchanged_names())
    # only the trainable tensors are exchanged: the global state holds nothing of the backbone
    assert names == set(state) == {"head.weight", "head.bias"} | {n for n in full if ".lora_B." in n}
    update = trainer.fit(state, 0)
    moved = {k for k, d in update.delta.items() if torch.count_nonzero(d)}
    assert moved and moved <= names
    # few labels per site: the validation AUROC may be undefined (one class)
    assert {"val_loss", "val_accuracy", "global_val_loss"} <= set(update.metrics)
    scores, labels, _ = trainer.predict_test(_apply(state, update.delta))
    assert len(scores) == len(labels) > 0


def test_classifier_refuses_a_checkpoint_with_another_hash(sites, backbone_dir):
    spec = _spec("BackboneClassificationTrainer", {"checkpoint": str(backbone_dir), "checkpoint_sha256": "0" * 64})
    trainer = BackboneClassificationTrainer(spec, site_dir=sites / "hospital-1", site_name="hospital-1", device="cpu")
    with pytest.raises(UserError, match="refused: .* but the job expects"):
        trainer.initial_state()


def test_image_size_must_match_the_backbone(sites):
    spec = _spec("BackboneClassificationTrainer").model_copy(update={"data": _spec("X").data.model_copy(
        update={"image_size": 64})})
    with pytest.raises(UserError, match="data.image_size is 64"):
        BackboneClassificationTrainer(spec, site_dir=sites / "hospital-1", device="cpu").initial_state()


def test_unknown_model_keys_are_named(sites):
    spec = _spec("BackboneClassificationTrainer", {"adaptaton": "lora"})
    with pytest.raises(UserError, match=r"unknown keys \['adaptaton'\]"):
        BackboneClassificationTrainer(spec, site_dir=sites / "hospital-1", device="cpu").initial_state()


def test_private_ffa_lora_round_keeps_a_fixed(sites, tmp_path):
    spec = _spec("BackboneClassificationTrainer", {"adaptation": "ffa_lora"},
                 dp_sgd={"noise_multiplier": 1.0, "max_grad_norm": 1.0})
    trainer = BackboneClassificationTrainer(spec, site_dir=sites / "hospital-2", site_name="hospital-2", device="cpu")
    start = trainer.initial_state()
    seeded_a = {k: v.clone() for k, v in trainer.model.state_dict().items() if ".lora_A." in k}
    update = trainer.fit(start, 0)
    assert update.metrics["dp_epsilon"] > 0
    assert seeded_a and not any(".lora_A." in k for k in update.delta)  # A is frozen: never exchanged
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in seeded_a.items())  # nor trained
    lora_b = [k for k in update.delta if ".lora_B." in k]
    assert any(torch.count_nonzero(update.delta[k]) > 0 for k in lora_b)

"""Site trainers for foundation models (``SiteTrainer`` hooks only; no NVFlare).

* :class:`MAEPretrainTrainer`: masked-autoencoder pretraining on every image of the declared
  modalities at the site, labelled or not, train split only. Metric: masked reconstruction ``loss``
  on the validation split (fixed masks, so rounds compare).
* :class:`BackboneClassificationTrainer`: a backbone (random, or loaded from a verified checkpoint)
  + linear head, adapted by ``linear_probe`` / ``lora`` / ``ffa_lora`` / ``partial`` / ``full``.

Job spec ``model:`` keys (all optional):

``backbone``          preset name or mapping (default ``vit-micro-2d``); ``data.image_size`` must equal its ``img_size``
``modalities``        pretraining: modalities to use (default: ``data.modalities``, else ``[CR, DX]``)
``masking_ratio``     pretraining: share of patches masked (default 0.75)
``decoder_layers``    pretraining: decoder blocks (default 1)
``checkpoint``        classification: backbone folder or ``backbone.safetensors`` (relative to the spec); it
                      never travels: a job carries only its sha256 and a site's runtime sets this key to
                      the site's own verified copy (:mod:`ai4hi_sdk.site.backbones`)
``checkpoint_sha256`` classification: refuse a checkpoint whose sha256 differs
``adaptation``        classification: a mode or ``{mode, rank, alpha, dropout, seed, targets, blocks}``
                      (default ``ffa_lora``; the LoRA seed defaults to ``train.seed``)
``pool``              classification: ``mean`` (default) or ``max`` over a ViT's tokens

:meth:`exchanged_names` gives the state-dict names of the trainable tensors: the only ones a round
needs to exchange.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import nn
from torch.utils.data import Dataset

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.adaptation import AdaptationConfig, apply_adaptation, trainable_state_names
from ai4hi_sdk.foundation.presets import resolve_backbone
from ai4hi_sdk.trainers.classification import ClassificationTrainer
from ai4hi_sdk.trainers.site_trainer import SiteTrainer

DEFAULT_BACKBONE = "vit-micro-2d"
DEFAULT_MODALITIES = ("CR", "DX")
#: masks of the validation loss come from this seed (the same every round)
EVAL_MASK_SEED = 0


PRETRAIN_KEYS = frozenset({"backbone", "modalities", "masking_ratio", "decoder_layers"})
CLASSIFY_KEYS = frozenset({"backbone", "checkpoint", "checkpoint_sha256", "adaptation", "pool", "num_classes"})


def _check_keys(spec: Any, allowed: frozenset[str], trainer: str) -> None:
    unknown = sorted(set(spec.model) - allowed)
    if unknown:
        raise UserError(f"model: unknown keys {unknown} for {trainer}; allowed: {sorted(allowed)}")


def _backbone(spec: Any) -> dict[str, Any]:
    config = resolve_backbone(spec.model.get("backbone", DEFAULT_BACKBONE))
    if config["family"] == "vit" and int(config["img_size"]) != spec.data.image_size:
        raise UserError(f"data.image_size is {spec.data.image_size}, but the backbone takes {config['img_size']}-pixel "
                        "images: set them equal")
    return config


class MAEPretrainTrainer(SiteTrainer):
    """Masked-autoencoder pretraining of a ViT backbone on a site's images (2D)."""

    metric_names: ClassVar[tuple[str, ...]] = ("loss",)

    def build_model(self) -> nn.Module:
        from ai4hi_sdk.foundation.mae import build_mae

        _check_keys(self.spec, PRETRAIN_KEYS, type(self).__name__)
        config = _backbone(self.spec)
        if config["spatial_dims"] != 2:
            raise UserError("MAEPretrainTrainer reads 2D images; 3D volumes are not wired to a site loader yet")
        model = self.spec.model
        return build_mae(config, masking_ratio=float(model.get("masking_ratio", 0.75)),
                         decoder_num_layers=int(model.get("decoder_layers", 1)))

    def build_datasets(self) -> Any:
        from ai4hi_sdk.foundation.datasets import load_pretrain_images

        modalities = self.spec.model.get("modalities") or self.spec.data.modalities or DEFAULT_MODALITIES
        if isinstance(modalities, str):
            modalities = [modalities]
        assert self.site_dir is not None  # the datasets property checks it first
        return load_pretrain_images(self.site_dir, modalities=modalities, image_size=self.spec.data.image_size,
                                    augment=self.spec.train.augment)

    def build_loss(self) -> nn.Module:
        from ai4hi_sdk.foundation.mae import MAELoss

        return MAELoss(int(_backbone(self.spec)["patch_size"]))

    def train_step(self, model: nn.Module, batch: Any, loss_fn: nn.Module) -> torch.Tensor:
        images = self.to_device(batch[0] if isinstance(batch, (list, tuple)) else batch)
        pred, mask = model(images)
        return loss_fn(pred, mask, images)

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        loss_fn = self.build_loss()
        setattr(loss_fn, "reduction", "none")  # per-image losses, summed below
        total, count = 0.0, 0
        # fixed masks: the same patches are hidden every round, so the losses compare
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(EVAL_MASK_SEED)
            for (images,) in self.loader(dataset, shuffle=False):
                images = self.to_device(images)
                pred, mask = model(images)
                total += float(loss_fn(pred, mask, images).sum())
                count += images.shape[0]
        return {"loss": total / count} if count else {}

    def exchanged_names(self) -> list[str]:
        """State-dict names of the trainable tensors (decoder and encoder, no frozen tokens)."""
        return trainable_state_names(self.model)

    def mae_state(self) -> dict[str, torch.Tensor]:
        """CPU copy of the whole MAE state (what :func:`~ai4hi_sdk.foundation.provenance.export_pretrained_backbone`
        turns into a backbone)."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


class BackboneClassificationTrainer(ClassificationTrainer):
    """Binary classification with a backbone + head, adapted with few labels (2D images)."""

    def build_model(self) -> nn.Module:
        from ai4hi_sdk.foundation.architectures import BackboneClassifier

        _check_keys(self.spec, CLASSIFY_KEYS, type(self).__name__)
        config = _backbone(self.spec)
        model = BackboneClassifier(config, num_classes=int(self.spec.model.get("num_classes", 2)),
                                   pool=str(self.spec.model.get("pool", "mean")))
        self.backbone_provenance = None
        checkpoint = self.spec.model.get("checkpoint")
        if checkpoint:
            self.backbone_provenance = self._load_checkpoint(model, str(checkpoint), config)
        adaptation = AdaptationConfig.from_mapping(self.spec.model.get("adaptation"), default_seed=self.spec.train.seed)
        self.trainable_names = apply_adaptation(model, adaptation)
        return model

    def _load_checkpoint(self, model: nn.Module, checkpoint: str, config: dict[str, Any]) -> Any:
        from ai4hi_sdk.foundation.batchnorm import freeze_batchnorm
        from ai4hi_sdk.foundation.checkpoint import conform_state, load_backbone

        path = Path(checkpoint)
        if not path.is_absolute():
            path = Path(self.spec.base_dir) / path
        state, provenance = load_backbone(path, expected_sha256=self.spec.model.get("checkpoint_sha256"))
        if provenance.arch_config != config:
            raise UserError(f"{path}: the checkpoint is a {provenance.arch} backbone, the job declares "
                            f"{self.spec.model.get('backbone', DEFAULT_BACKBONE)}")
        encoder = cast(nn.Module, model.encoder)
        state, _ = conform_state(state, encoder.state_dict(), where=str(path))
        encoder.load_state_dict(state, strict=True)
        freeze_batchnorm(encoder)  # keep the checkpoint's statistics (never GroupNorm)
        return provenance

    def build_datasets(self) -> Any:
        _backbone(self.spec)
        return super().build_datasets()

    def exchanged_names(self) -> list[str]:
        """State-dict names of the trainable tensors (adapters and head, per the adaptation)."""
        return trainable_state_names(self.model)

"""``ClassificationTrainer``: a ready-to-use 2D image classifier (MONAI DenseNet) for site DICOM.

Model arguments (``model:`` in the job spec) go to :class:`monai.networks.nets.DenseNet`; the
defaults make a small network (about 11k parameters) that trains on CPU in seconds per round.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from monai.networks.nets import DenseNet
from torch import nn
from torch.utils.data import Dataset

from ai4hi_sdk.trainers.site_trainer import SiteTrainer
from ai4hi_sdk.validation.metrics import binary_classification_metrics

DEFAULT_MODEL_ARGS: dict[str, Any] = {
    "init_features": 16,
    "growth_rate": 8,
    "block_config": [2, 2, 2],
    "bn_size": 2,
    "dropout_prob": 0.0,
}


class ClassificationTrainer(SiteTrainer):
    """Binary classification of 2D images (e.g. chest radiographs: finding present / absent).

    Input batches are ``(image [B, 1, S, S] float32, label [B] int64)``; the model outputs two
    logits. Metrics: cross-entropy ``loss``, ``accuracy`` at p=0.5, ``auroc``. Labels come from
    ``labels.csv`` or, with ``data.labels_from: reports``, from the site's reports (weak labels).
    """

    metric_names: ClassVar[tuple[str, ...]] = ("loss", "accuracy", "auroc")

    def build_model(self) -> nn.Module:
        args = {**DEFAULT_MODEL_ARGS, **self.spec.model}
        args["block_config"] = tuple(args["block_config"])
        return DenseNet(spatial_dims=2, in_channels=1, out_channels=2, **args)

    def build_datasets(self) -> Any:
        from ai4hi_sdk.data.dataset import load_site_splits
        from ai4hi_sdk.data.selection import ImageSelection

        data = self.spec.data
        assert self.site_dir is not None  # the datasets property checks it first
        return load_site_splits(self.site_dir, image_size=data.image_size, augment=self.spec.train.augment,
                                label_column=data.label_column, selection=ImageSelection.from_spec(data),
                                labels_from=data.labels_from, report_finding=data.report_finding,
                                uncertain=data.uncertain, labeler_version=data.labeler_version)

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        labels, probs = [], []
        for images, targets in self.loader(dataset, shuffle=False):
            with self.autocast():
                logits = model(self.to_device(images))
            probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
            labels.append(targets.numpy())
        if not labels:
            return {}
        return binary_classification_metrics(np.concatenate(labels), np.concatenate(probs))

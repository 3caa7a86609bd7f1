"""Example of bringing your own model and loss: subclass an SDK trainer, override two hooks.

Everything else (device choice, AMP, seeding, local epochs, metrics, the delta sent to the
server, the egress log) comes from the SDK. Referenced by ``jobs/cxr_custom_trainer.yaml``.
"""

from __future__ import annotations

from torch import nn

from ai4hi_sdk.trainers.classification import ClassificationTrainer


class SmallCNNTrainer(ClassificationTrainer):
    """A plain 3-layer CNN with label smoothing instead of the default MONAI DenseNet.

    ``model:`` keys in the job spec: ``width`` (channels of the first layer, default 8).
    Input ``[B, 1, S, S]`` float32, output ``[B, 2]`` logits.
    """

    def build_model(self) -> nn.Module:
        width = int(self.spec.model.get("width", 8))
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GroupNorm(2, width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(2, 2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, 2),
        )

    def build_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=0.05)

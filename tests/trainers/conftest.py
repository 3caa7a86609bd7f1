"""A tiny in-memory trainer so SiteTrainer mechanics are tested without DICOM or NVFlare."""

from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import TensorDataset

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.trainers.classification import ClassificationTrainer
from ai4hi_sdk.trainers.device import derive_seed


@dataclass
class Splits:
    train: TensorDataset
    val: TensorDataset


def make_splits(seed: int = 0, n: int = 24, size: int = 16) -> Splits:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randn(n, 1, size, size, generator=gen) * 0.1
    images[labels == 1, :, 4:8, 4:8] += 1.0  # a learnable "finding"
    return Splits(TensorDataset(images[: n - 8], labels[: n - 8]), TensorDataset(images[n - 8:], labels[n - 8:]))


class InMemoryTrainer(ClassificationTrainer):
    def build_datasets(self):
        return make_splits(seed=derive_seed(0, self.site_name) % 1000)


@pytest.fixture
def spec() -> JobSpec:
    return JobSpec(name="unit", trainer="tests.trainers.conftest:InMemoryTrainer",
                   model={"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
                   train={"rounds": 2, "local_epochs": 1, "batch_size": 4, "lr": 0.05, "threads": 1})

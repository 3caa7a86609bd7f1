"""Robustness panel on real MONAI transforms and real torch models: a model that reads one pixel is
brittle under noise where a model that averages a region is not, and the panel shows it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from ai4hi_sdk.validation.future_ai import future_ai_table
from ai4hi_sdk.validation.robustness import (
    DEFAULT_PERTURBATIONS,
    Perturbation,
    perturbation_labels,
    robustness_panel,
    robustness_summary,
)
from ai4hi_sdk.validation.site_report import flatten_metrics


class Images(torch.utils.data.Dataset):
    """1 x 32 x 32 images: background 0.35, a faint disc (0.45) at the centre when positive."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % 2
        yy, xx = np.mgrid[:32, :32]
        disc = ((yy - 16) ** 2 + (xx - 16) ** 2) < 64
        self.images = [torch.tensor(0.35 + 0.1 * disc * y + rng.normal(0, 0.02, (32, 32)), dtype=torch.float32)[None]
                       for y in self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], torch.tensor(int(self.labels[i]))


class Reader(nn.Module):
    """Two logits from the centre: one pixel (``size=1``) or the mean of a ``size`` x ``size`` patch."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x):
        lo = 16 - self.size // 2
        v = x[:, 0, lo:lo + self.size, lo:lo + self.size].mean((1, 2))
        return torch.stack([torch.zeros_like(v), 40 * (v - 0.4)], 1)


def _direct_auroc(model, ds):
    with torch.no_grad():
        logits = model(torch.stack([ds[i][0] for i in range(len(ds))]))
    return roc_auc_score(ds.labels, torch.softmax(logits, 1)[:, 1].numpy())


def test_a_brittle_candidate_is_visible_next_to_a_robust_champion():
    ds = Images(80)
    pixel, patch = Reader(1), Reader(12)
    cand = robustness_panel(pixel, ds)
    champ = robustness_panel(patch, ds)
    assert cand["auroc"] == pytest.approx(_direct_auroc(pixel, ds)) and cand["auroc"] > 0.99
    assert champ["auroc"] > 0.99
    assert cand["perturbations"]["noise_0.1"]["delta"] < -0.1  # one pixel drowns in noise ...
    assert champ["perturbations"]["noise_0.1"]["delta"] > -0.02  # ... a 12 x 12 mean does not
    assert cand["worst_delta"] == min(v["delta"] for v in cand["perturbations"].values())
    summary = robustness_summary(cand, champ)
    row = next(r for r in future_ai_table({"model": "c", "robustness": {"A": summary}})
               if r["evidence"].startswith("robustness panel"))
    assert row["status"] == "failed" and "brittle at A" in row["detail"]


def test_panel_is_aggregates_with_fixed_names():
    small, large = robustness_panel(Reader(12), Images(40)), robustness_panel(Reader(12), Images(80, seed=1))
    assert set(flatten_metrics(small)) == set(flatten_metrics(large))
    assert set(small["perturbations"]) == set(perturbation_labels()) and len(DEFAULT_PERTURBATIONS) == 8
    assert small["n"] == 40 and large["n"] == 80


def test_identity_perturbation_changes_nothing_and_shapes_are_kept():
    ds = Images(40)
    panel = robustness_panel(Reader(1), ds, perturbations=[Perturbation("contrast", 1.0)])
    assert panel["perturbations"]["contrast_1"]["delta"] == pytest.approx(0.0, abs=1e-12)
    batch = torch.stack([ds[i][0] for i in range(4)])
    for p in DEFAULT_PERTURBATIONS:
        out = p.transform()(batch)
        assert out.shape == batch.shape and torch.isfinite(out).all() and not torch.equal(out, batch), p.label
    # the batched filters treat every image alone: the same result as one image at a time
    blur = Perturbation("blur", 1.0).transform()
    assert torch.allclose(blur(batch)[2], blur(batch[2:3])[0], atol=1e-6)
    vol = torch.rand(2, 1, 8, 16, 16)
    assert Perturbation("resolution", 0.5).transform()(vol).shape == vol.shape


def test_too_few_studies_of_a_class_are_suppressed():
    panel = robustness_panel(Reader(12), Images(18))  # 9 per class < k=10
    assert panel == {"n": 18, "suppressed": True}
    with pytest.raises(ValueError, match="unknown perturbation"):
        Perturbation("rotate", 1.0).transform()


def test_segmentation_panel_reports_dice():
    rng = np.random.default_rng(0)

    class Volumes(torch.utils.data.Dataset):
        def __init__(self):
            self.items = []
            for _ in range(12):
                mask = np.zeros((1, 8, 16, 16), dtype=np.float32)
                z, y, x = rng.integers(1, 4), rng.integers(2, 8), rng.integers(2, 8)
                mask[0, z:z + 4, y:y + 6, x:x + 6] = 1
                self.items.append((torch.tensor(0.2 + 0.5 * mask + rng.normal(0, 0.03, mask.shape),
                                                dtype=torch.float32), torch.tensor(mask)))

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    class Threshold(nn.Module):
        def forward(self, x):
            return 50 * (x - 0.45)

    ds = Volumes()
    panel = robustness_panel(Threshold(), ds, task="segmentation", min_count=10,
                             perturbations=[Perturbation("blur", 1.0), Perturbation("noise", 0.3)])
    by_hand = []
    for img, mask in ds.items:
        pred, true = (img > 0.45).numpy(), mask.numpy() > 0
        by_hand.append(2 * (pred & true).sum() / (pred.sum() + true.sum()))
    assert panel["dice"] == pytest.approx(np.mean(by_hand)) and panel["dice"] > 0.95
    assert panel["perturbations"]["noise_0.3"]["delta"] < -0.1

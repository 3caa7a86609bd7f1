"""Site-local explanation pages: occlusion saliency finds the region a model reads; the page holds
the images (mode 0600, in the given folder); what the function returns is a few numbers only."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch
from torch import nn

from ai4hi_sdk.reports.explanations import PAGE, render_explanations, saliency_maps, share_in_mask
from ai4hi_sdk.validation.site_report import flatten_metrics

TOP_LEFT = np.zeros((32, 32), dtype=bool)
TOP_LEFT[:16, :16] = True


class Quadrant(nn.Module):
    """Two logits from the mean intensity of one 16 x 16 quadrant (``(row, col)`` of its corner)."""

    def __init__(self, corner):
        super().__init__()
        self.r, self.c = corner

    def forward(self, x):
        v = x[:, 0, self.r:self.r + 16, self.c:self.c + 16].mean((1, 2))
        return torch.stack([torch.zeros_like(v), 20 * (v - 0.5)], 1)


class Images(torch.utils.data.Dataset):
    def __init__(self, n=12, seed=0):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % 2
        self.images = [torch.tensor(rng.random((1, 32, 32)) * 0.3 + 0.4 * y, dtype=torch.float32) for y in self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], torch.tensor(int(self.labels[i]))


def test_occlusion_saliency_is_where_the_model_looks():
    images = torch.stack([Images()[1][0], Images()[3][0]])
    maps, scores = saliency_maps(Quadrant((0, 0)), images, mask_size=4)  # a 4-pixel patch smears 2 pixels
    assert maps.shape == (2, 32, 32) and maps.max() == pytest.approx(1.0) and maps.min() >= 0
    with torch.no_grad():
        assert scores == pytest.approx(torch.softmax(Quadrant((0, 0))(images), 1)[:, 1].numpy(), abs=1e-6)
    assert share_in_mask(maps[0], TOP_LEFT) > 0.8
    other, _ = saliency_maps(Quadrant((16, 16)), images, mask_size=4)
    assert share_in_mask(other[0], TOP_LEFT) < 0.2


def test_page_stays_local_and_only_numbers_return(tmp_path):
    ds = Images(12)
    out = tmp_path / "site-ws" / "explanations"
    summary = render_explanations(Quadrant((0, 0)), Quadrant((16, 16)), ds, out, n_images=10, mask_size=4,
                                  masks=lambda i: TOP_LEFT, min_count=10)
    page = (out / PAGE).read_text(encoding="utf-8")
    assert (out / PAGE).stat().st_mode & 0o777 == 0o600
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(imgs) == 10 and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    # sampled half and half
    assert page.count("<figcaption>label: positive") == 5 and page.count("<figcaption>label: negative") == 5
    assert "candidate P(positive)" in page and "never sent" in page
    assert summary["candidate"]["n_images"] == summary["champion"]["n_masked"] == 10
    assert summary["candidate"]["saliency_in_mask"] > 0.8 > 0.2 > summary["champion"]["saliency_in_mask"]
    flat = flatten_metrics(summary)
    assert set(flat) == {f"{role}|{k}" for role in ("candidate", "champion")
                         for k in ("n_images", "n_masked", "saliency_in_mask")}
    # fewer masked images than k: the shares do not leave
    few = render_explanations(Quadrant((0, 0)), Quadrant((16, 16)), ds, tmp_path / "b", n_images=4,
                              masks=lambda i: TOP_LEFT, min_count=10)
    assert few == {role: {"n_images": 4, "n_masked": 4} for role in ("candidate", "champion")}


def test_gradcam_on_a_conv_net(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                          nn.ReLU())
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    ds = Images(6)
    maps, scores = saliency_maps(Net(), torch.stack([ds[i][0] for i in range(2)]), method="gradcam",
                                 target_layer="features.3")
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1
    summary = render_explanations(Net(), Net(), ds, tmp_path, n_images=2, method="gradcam",
                                  target_layers=("features.3", "features.3"))
    assert summary["candidate"]["n_images"] == 2 and (tmp_path / PAGE).is_file()
    with pytest.raises(ValueError, match="target_layer"):
        saliency_maps(Net(), ds[0][0][None], method="gradcam")

"""Robustness panel (site side): a model's score under acquisition-like perturbations, aggregates only.

Each :class:`Perturbation` is a MONAI transform applied to every image of the site's test split,
standing in for what differs between scanners and protocols:

* ``noise``: additive Gaussian noise, standard deviation ``level`` in image intensity units
  (:class:`monai.transforms.RandGaussianNoise`, seeded);
* ``contrast``: gamma ``level`` (:class:`monai.transforms.AdjustContrast`);
* ``blur``: Gaussian smoothing, sigma ``level`` voxels (:class:`monai.transforms.GaussianSmooth`);
* ``resolution``: down-sampled to ``level`` times the grid (area) and back (linear interpolation)
  (:class:`monai.transforms.Resize` twice).

The default levels (:data:`DEFAULT_PERTURBATIONS`) suit images scaled to about [0, 1], as the
SDK's preprocessing does; pass others for other intensity scales.

:func:`robustness_panel` returns the clean score (AUROC for classification, mean Dice for
segmentation), the score under each perturbation and its change; nothing per study. A split with
fewer than ``min_count`` studies of a class (classification) or cases with a lesion
(segmentation) gives ``{"n", "suppressed": True}`` only. The result fits under a model's root of a
validation report (``candidate|robustness|...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

Kind = Literal["noise", "contrast", "blur", "resolution"]


@dataclass(frozen=True)
class Perturbation:
    """One perturbation at one strength (see the module doc for what ``level`` means per kind)."""

    kind: Kind
    level: float

    @property
    def label(self) -> str:
        return f"{self.kind}_{self.level:g}"

    def transform(self, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function of a batch ``(B, C, *spatial)`` -> the perturbed batch (same shape). Spatial
        filters run on all images at once (images x channels as MONAI's channel axis); the gamma
        is applied per image (it uses each image's own intensity range)."""
        from monai.transforms import AdjustContrast, GaussianSmooth, RandGaussianNoise, Resize

        def batched(fn: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], torch.Tensor]:
            def run(batch: torch.Tensor) -> torch.Tensor:
                flat = batch.reshape(-1, *batch.shape[2:])  # (B*C, *spatial): every image a channel
                return torch.as_tensor(fn(flat), dtype=batch.dtype).reshape(batch.shape)
            return run

        if self.kind == "noise":
            noise = RandGaussianNoise(prob=1.0, std=self.level, sample_std=False)
            noise.set_random_state(seed)
            return batched(noise)
        if self.kind == "contrast":
            gamma = AdjustContrast(gamma=self.level)
            return lambda batch: torch.stack([torch.as_tensor(gamma(img), dtype=batch.dtype) for img in batch])
        if self.kind == "blur":
            return batched(GaussianSmooth(sigma=self.level))
        if self.kind == "resolution":
            if not 0 < self.level <= 1:
                raise ValueError("resolution level is the kept share of the grid, in (0, 1]")

            def lower(flat: torch.Tensor) -> torch.Tensor:
                shape = list(flat.shape[1:])
                small = [max(1, int(round(s * self.level))) for s in shape]
                mode = "bilinear" if len(shape) == 2 else "trilinear"
                return Resize(spatial_size=shape, mode=mode)(Resize(spatial_size=small, mode="area")(flat))

            return batched(lower)
        raise ValueError(f"unknown perturbation {self.kind!r} (noise, contrast, blur, resolution)")


#: two strengths of each kind, for images with intensities about [0, 1] (the SDK's preprocessing)
DEFAULT_PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("noise", 0.05), Perturbation("noise", 0.1),
    Perturbation("contrast", 0.7), Perturbation("contrast", 1.5),
    Perturbation("blur", 1.0), Perturbation("blur", 2.0),
    Perturbation("resolution", 0.5), Perturbation("resolution", 0.25),
)


def _split(item: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(item, dict):
        return torch.as_tensor(item["image"]), torch.as_tensor(item["label"])
    image, target = item[0], item[1]
    return torch.as_tensor(image), torch.as_tensor(target)


def _outputs(model: nn.Module, dataset: Dataset, transform: Callable | None, task: str, batch_size: int,
             device: str | torch.device) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-batch model outputs (P(positive) or binary masks) and targets, in memory only."""
    outs, targets = [], []
    model.eval()
    with torch.no_grad():
        for images, target in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate):
            if transform is not None:
                images = transform(images)
            logits = model(images.to(device)).float()
            if task == "classification":
                out = torch.softmax(logits, 1)[:, 1] if logits.shape[1] > 1 else torch.sigmoid(logits[:, 0])
            else:
                out = (logits.argmax(1, keepdim=True) > 0) if logits.shape[1] > 1 else (torch.sigmoid(logits) > 0.5)
            outs.append(out.cpu().numpy())
            targets.append(target.numpy())
    return outs, targets


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [_split(item) for item in items]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _score(outs: list[np.ndarray], targets: list[np.ndarray], task: str) -> float:
    if task == "classification":
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(np.concatenate(targets).astype(int).ravel(), np.concatenate(outs).ravel()))
    from monai.metrics import DiceMetric

    pred = torch.as_tensor(np.concatenate(outs)).float()
    true = torch.as_tensor(np.concatenate(targets) != 0).float()
    if true.ndim == pred.ndim - 1:
        true = true[:, None]
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(pred, true).ravel().numpy()
    return float(np.nanmean(dice))


def _support(dataset: Dataset, task: str) -> tuple[int, int]:
    """(n, smallest class count) for classification; (n, cases with a lesion) for segmentation."""
    n, small = len(dataset), 0
    if task == "classification":
        labels = np.array([int(_split(dataset[i])[1]) for i in range(n)])
        small = int(min((labels == 1).sum(), (labels == 0).sum()))
    else:
        small = int(sum(bool(torch.as_tensor(_split(dataset[i])[1]).any()) for i in range(n)))
    return n, small


def robustness_panel(model: nn.Module, dataset: Dataset, *, task: Literal["classification", "segmentation"] =
                     "classification", perturbations: Iterable[Perturbation] = DEFAULT_PERTURBATIONS,
                     min_count: int = 10, batch_size: int = 16, device: str | torch.device = "cpu",
                     seed: int = 0) -> dict[str, Any]:
    """Score of ``model`` on ``dataset`` clean and under each perturbation.

    Args:
        model: outputs logits ``(B, C)`` (classification: C=2 softmax or C=1 sigmoid) or
            ``(B, C, *spatial)`` (segmentation: foreground is argmax > 0, or sigmoid > 0.5 for C=1).
        dataset: items ``(image (C, *spatial), label)`` or dicts with ``image``/``label`` (a mask
            for segmentation); the site's fixed test split.
        min_count: ``k``; below it per class (or lesion cases) only ``n`` and ``suppressed`` return.
        device: where the batches go; ``model`` must already be there (the perturbations run on CPU).

    Returns:
        ``{"n", M, "perturbations": {label: {M, "delta"}}, "worst_delta"}`` where ``M`` is
        ``"auroc"`` or ``"dice"`` (the clean score at the top, the perturbed one per label) and
        ``delta`` = perturbed - clean. Numbers only, a fixed set of names: it flattens into a
        METRICS payload.
    """
    if task not in ("classification", "segmentation"):
        raise ValueError(f"task must be classification or segmentation, got {task!r}")
    perturbations = list(perturbations)
    labels = [p.label for p in perturbations]
    if len(set(labels)) != len(labels):
        raise ValueError("each perturbation may appear once")
    metric = "auroc" if task == "classification" else "dice"
    n, support = _support(dataset, task)
    if support < min_count:
        return {"n": n, "suppressed": True}
    clean = _score(*_outputs(model, dataset, None, task, batch_size, device), task)
    panel: dict[str, dict[str, float]] = {}
    for i, p in enumerate(perturbations):
        score = _score(*_outputs(model, dataset, p.transform(seed + i), task, batch_size, device), task)
        panel[p.label] = {metric: score, "delta": score - clean}
    return {"n": n, metric: clean, "perturbations": panel,
            "worst_delta": min((v["delta"] for v in panel.values()), default=0.0)}


def robustness_summary(candidate: dict[str, Any], champion: dict[str, Any] | None = None) -> dict[str, float | None]:
    """``{"worst_delta", "champion_worst_delta"}`` of one site's panels, for the FUTURE-AI table."""
    def worst(panel: dict | None) -> float | None:
        return None if not panel or panel.get("suppressed") else float(panel.get("worst_delta", 0.0))

    return {"worst_delta": worst(candidate), "champion_worst_delta": worst(champion)}


def perturbation_labels(perturbations: Sequence[Perturbation] = DEFAULT_PERTURBATIONS) -> list[str]:
    """The names a panel's entries have (fixed by the perturbations, not by the data)."""
    return [p.label for p in perturbations]

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
from typing import Any, Callable, Iterable, Literal, Sequence, Sized, cast

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


@dataclass(frozen=True)
class RobustnessScorer:
    """How a panel scores one task kind's model (the task strategy names its scorer).

    Attributes:
        metric: the score's name in the panel (``"auroc"``, ``"dice"``).
        output: logits of a batch -> what is scored (P(positive) ``(B,)``, binary masks...).
        score: per-batch outputs and targets (in memory only) -> the score.
        support: the test split -> the count ``k`` applies to (smallest class, cases with a lesion).
    """

    metric: str
    output: Callable[[torch.Tensor], torch.Tensor]
    score: Callable[[list[np.ndarray], list[np.ndarray]], float]
    support: Callable[[Dataset], int]


def _length(dataset: Dataset) -> int:
    return len(cast(Sized, dataset))  # a map-style dataset (torch types Dataset without __len__)


def _probability(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, 1)[:, 1] if logits.shape[1] > 1 else torch.sigmoid(logits[:, 0])


def _auroc(outs: list[np.ndarray], targets: list[np.ndarray]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.concatenate(targets).astype(int).ravel(), np.concatenate(outs).ravel()))


def _smallest_class(dataset: Dataset) -> int:
    labels = np.array([int(_split(dataset[i])[1]) for i in range(_length(dataset))])
    return int(min((labels == 1).sum(), (labels == 0).sum()))


def _foreground(logits: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1, keepdim=True) > 0) if logits.shape[1] > 1 else (torch.sigmoid(logits) > 0.5)


def _mean_dice(outs: list[np.ndarray], targets: list[np.ndarray]) -> float:
    from monai.metrics import DiceMetric

    pred = torch.as_tensor(np.concatenate(outs)).float()
    true = torch.as_tensor(np.concatenate(targets) != 0).float()
    if true.ndim == pred.ndim - 1:
        true = true[:, None]
    # a batch-first tensor in gives one tensor out (MONAI's IterationMetric.__call__ is annotated for lists too)
    dice = cast(torch.Tensor, DiceMetric(include_background=True, reduction="none", ignore_empty=True)(pred, true))
    return float(np.nanmean(dice.ravel().numpy()))


def _lesion_cases(dataset: Dataset) -> int:
    return int(sum(bool(torch.as_tensor(_split(dataset[i])[1]).any()) for i in range(_length(dataset))))


#: binary classification: AUROC of P(positive); k applies to the smaller class
AUROC_SCORER = RobustnessScorer("auroc", _probability, _auroc, _smallest_class)
#: binary segmentation: mean Dice of the foreground masks; k applies to the cases with a lesion
DICE_SCORER = RobustnessScorer("dice", _foreground, _mean_dice, _lesion_cases)
#: the built-in task kinds' scorers by name (``robustness_panel(task=...)``)
SCORERS: dict[str, RobustnessScorer] = {"classification": AUROC_SCORER, "segmentation": DICE_SCORER}
#: the entries of a panel that are not its score
_PANEL_KEYS = frozenset({"n", "suppressed", "perturbations", "worst_delta"})


def _outputs(model: nn.Module, dataset: Dataset, transform: Callable | None, scorer: RobustnessScorer,
             batch_size: int, device: str | torch.device) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-batch model outputs (what ``scorer`` scores) and targets, in memory only."""
    outs, targets = [], []
    model.eval()
    with torch.no_grad():
        for images, target in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate):
            if transform is not None:
                images = transform(images)
            out = scorer.output(model(images.to(device)).float())
            outs.append(out.cpu().numpy())
            targets.append(target.numpy())
    return outs, targets


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [_split(item) for item in items]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def robustness_panel(model: nn.Module, dataset: Dataset, *, task: str | RobustnessScorer = "classification",
                     perturbations: Iterable[Perturbation] = DEFAULT_PERTURBATIONS,
                     min_count: int = 10, batch_size: int = 16, device: str | torch.device = "cpu",
                     seed: int = 0) -> dict[str, Any]:
    """Score of ``model`` on ``dataset`` clean and under each perturbation.

    Args:
        model: outputs logits ``(B, C)`` (classification: C=2 softmax or C=1 sigmoid) or
            ``(B, C, *spatial)`` (segmentation: foreground is argmax > 0, or sigmoid > 0.5 for C=1).
        dataset: items ``(image (C, *spatial), label)`` or dicts with ``image``/``label`` (a mask
            for segmentation); the site's fixed test split.
        task: a built-in kind's name (``"classification"``, ``"segmentation"``) or a task
            strategy's :class:`RobustnessScorer`.
        min_count: ``k``; below it per class (or lesion cases) only ``n`` and ``suppressed`` return.
        device: where the batches go; ``model`` must already be there (the perturbations run on CPU).

    Returns:
        ``{"n", M, "perturbations": {label: {M, "delta"}}, "worst_delta"}`` where ``M`` is the
        scorer's metric (``"auroc"``, ``"dice"``: the clean score at the top, the perturbed one per
        label) and ``delta`` = perturbed - clean. Numbers only, a fixed set of names: it flattens
        into a METRICS payload.
    """
    if isinstance(task, str):
        if task not in SCORERS:
            raise ValueError(f"task must be one of {', '.join(SCORERS)} or a RobustnessScorer, got {task!r}")
        task = SCORERS[task]
    scorer = task
    perturbations = list(perturbations)
    labels = [p.label for p in perturbations]
    if len(set(labels)) != len(labels):
        raise ValueError("each perturbation may appear once")
    metric = scorer.metric
    n = _length(dataset)
    if scorer.support(dataset) < min_count:
        return {"n": n, "suppressed": True}
    clean = scorer.score(*_outputs(model, dataset, None, scorer, batch_size, device))
    panel: dict[str, dict[str, float]] = {}
    for i, p in enumerate(perturbations):
        score = scorer.score(*_outputs(model, dataset, p.transform(seed + i), scorer, batch_size, device))
        panel[p.label] = {metric: score, "delta": score - clean}
    return {"n": n, metric: clean, "perturbations": panel,
            "worst_delta": min((v["delta"] for v in panel.values()), default=0.0)}


def panel_metric(panel: dict[str, Any]) -> str | None:
    """The score's name in a (not suppressed) panel: its one entry besides n and the perturbations."""
    return next((k for k in panel if k not in _PANEL_KEYS), None)


def robustness_summary(candidate: dict[str, Any], champion: dict[str, Any] | None = None) -> dict[str, float | None]:
    """``{"worst_delta", "champion_worst_delta"}`` of one site's panels, for the FUTURE-AI table."""
    def worst(panel: dict | None) -> float | None:
        return None if not panel or panel.get("suppressed") else float(panel.get("worst_delta", 0.0))

    return {"worst_delta": worst(candidate), "champion_worst_delta": worst(champion)}


def perturbation_labels(perturbations: Sequence[Perturbation] = DEFAULT_PERTURBATIONS) -> list[str]:
    """The names a panel's entries have (fixed by the perturbations, not by the data)."""
    return [p.label for p in perturbations]

"""``SegmentationTrainer``: a ready-to-use 3D binary segmenter (MONAI UNet) for site CT series.

Model arguments (``model:`` in the job spec) go to :class:`monai.networks.nets.UNet`; the
defaults make a small network (channels (8, 16, 32), strides (2, 2), about 30k parameters) that
trains on CPU in seconds per round on the synthetic 24 x 32 x 32 CT volumes. Loss: soft Dice on
the sigmoid of one output channel. A voxel is predicted foreground when its sigmoid is >= 0.5.

Data: :func:`~ai4hi_sdk.data.volumes.load_site_volume_splits` (series assembled by geometry, masks
matched by position; the images it uses are those the job's ``data:`` block declares). ``data.label_column``
names the mask column when it is not the default ``label``. HD95 is in each case's own millimetres.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from monai.losses import DiceLoss
from monai.networks.nets import UNet
from torch import nn
from torch.utils.data import Dataset

from ai4hi_sdk.data.volumes import DicomVolumeDataset
from ai4hi_sdk.trainers.site_trainer import SiteTrainer
from ai4hi_sdk.trainers.state import load_exchanged_state
from ai4hi_sdk.validation.segmentation import segmentation_report

DEFAULT_MODEL_ARGS: dict[str, Any] = {
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 0,
    "act": "relu",        # PReLU (MONAI's default) has no opacus per-sample gradient rule
    "norm": "instance",   # no running statistics to average across sites
}
#: trainer keys of ``model:`` that are not UNet arguments
_TRAINER_KEYS = ("hu_window",)


class SegmentationTrainer(SiteTrainer):
    """Binary segmentation of 3D volumes (e.g. CT lesions).

    Input batches are ``(volume [B, 1, D, H, W] float32, mask [B, 1, D, H, W] float32)``; the
    model outputs one logit per voxel. Metrics on the validation split: soft-Dice ``loss``, mean
    ``dice`` and mean ``hd95`` (mm, cases where it is defined) of the binarised prediction.
    """

    task: ClassVar[str] = "segmentation"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "dice", "hd95")

    def build_model(self) -> nn.Module:
        args = {k: v for k, v in {**DEFAULT_MODEL_ARGS, **self.spec.model}.items() if k not in _TRAINER_KEYS}
        args["channels"] = tuple(args["channels"])
        args["strides"] = tuple(args["strides"])
        return UNet(spatial_dims=3, in_channels=1, out_channels=1, **args)

    def build_datasets(self) -> Any:
        from ai4hi_sdk.data.selection import ImageSelection
        from ai4hi_sdk.data.volumes import DEFAULT_HU_WINDOW, MASK_COLUMN, load_site_volume_splits

        column = self.spec.data.label_column
        window = tuple(self.spec.model.get("hu_window", DEFAULT_HU_WINDOW))
        assert self.site_dir is not None  # the datasets property checks it first
        return load_site_volume_splits(self.site_dir, mask_column=MASK_COLUMN if column == "label" else column,
                                       hu_window=window, divisor=int(np.prod(self._strides())),
                                       selection=ImageSelection.from_spec(self.spec.data))

    def build_loss(self) -> nn.Module:
        return DiceLoss(sigmoid=True)

    def train_step(self, model: nn.Module, batch: Any, loss_fn: nn.Module) -> torch.Tensor:
        volumes, masks = self.to_device(batch)
        # the Dice sums run in float32 even under CUDA mixed precision (fp16 sums overflow on big volumes)
        return loss_fn(model(volumes).float(), masks)

    def _strides(self) -> list[int]:
        return [int(s) for s in self.spec.model.get("strides", DEFAULT_MODEL_ARGS["strides"])]

    # ------------------------------------------------------------------ predictions (stay local)
    def predict_masks(self, model: nn.Module, dataset: Dataset) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """Binary predicted and true masks (unpadded, uint8 ``[D, H, W]``) of every item of a
        :class:`~ai4hi_sdk.data.volumes.DicomVolumeDataset`, and the mean soft-Dice loss."""
        volumes_of = _volume_dataset(dataset)
        loss_fn = self.build_loss()
        preds: list[np.ndarray] = []
        losses: list[float] = []
        model.eval()
        with torch.no_grad():
            for volumes, masks in self.loader(dataset, shuffle=False):
                with self.autocast():
                    logits = model(self.to_device(volumes)).float()
                losses.append(float(loss_fn(logits, self.to_device(masks))) * len(volumes))
                preds.extend((logits[:, 0] >= 0).to(torch.uint8).cpu().numpy())
        pred = [volumes_of.crop(i, p) for i, p in enumerate(preds)]
        true = [volumes_of.true_mask(i) for i in range(len(volumes_of))]
        return pred, true, sum(losses) / max(len(volumes_of), 1)

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        volumes_of = _volume_dataset(dataset)
        if len(volumes_of) == 0:
            return {}
        pred, true, loss = self.predict_masks(model, volumes_of)
        report = _report(pred, true, volumes_of.spacings())  # each case's HD95 in its own mm
        return {"loss": loss, "dice": report["dice"], "hd95": report["hd95"]}

    def predict_test(self, global_state: Mapping[str, torch.Tensor]) -> tuple[Any, Any, dict[str, list[str]]]:
        """Masks of ``global_state`` on this site's fixed test split — for local validation only.

        Returns ``(pred_masks, true_masks, attributes)``: lists of ``n`` uint8 arrays ``[D, H, W]``
        (prediction: sigmoid >= 0.5) and attribute name -> ``n`` subgroup strings.
        """
        load_exchanged_state(self.model, global_state, self.exchanged_names())
        dataset = self.datasets.test
        pred, true, _ = self.predict_masks(self.model, dataset)
        attributes: dict[str, list[str]] = {}
        for i in range(len(dataset)):
            for name, value in dataset.attributes(i).items():
                attributes.setdefault(name, []).append(str(value))
        return pred, true, attributes

    def test_spacing(self) -> tuple[float, float, float] | list[tuple[float, float, float]] | None:
        """Voxel spacing (mm, slice/row/column) of the test split: the one all cases share, else one
        per case (in ``predict_test`` order); None for an empty split."""
        dataset = self.datasets.test
        return dataset.spacing() if dataset.spacing() is not None or not len(dataset) else dataset.spacings()


def _volume_dataset(dataset: Dataset) -> DicomVolumeDataset:
    if not isinstance(dataset, DicomVolumeDataset):
        raise TypeError(f"SegmentationTrainer evaluates DicomVolumeDataset splits, got {type(dataset).__name__} "
                        "(override predict_masks and evaluate for another dataset)")
    return dataset


def _report(pred: list[np.ndarray], true: list[np.ndarray], spacings: list) -> dict:
    """:func:`segmentation_report` over cases of possibly different shapes (grouped by shape), each
    case's HD95 with its own ``spacings[i]``."""
    if len({p.shape for p in pred}) <= 1:
        return segmentation_report(pred, true, spacing=spacings or None)
    parts = {}
    for shape in {p.shape for p in pred}:
        idx = [i for i, p in enumerate(pred) if p.shape == shape]
        parts[shape] = segmentation_report([pred[i] for i in idx], [true[i] for i in idx],
                                           spacing=[spacings[i] for i in idx])
    return combine_reports(list(parts.values()))


def combine_reports(reports: list[dict]) -> dict:
    """Pool :func:`segmentation_report` results of disjoint case sets (means weighted by support)."""
    shared = {tuple(r["spacing"]) if r["spacing"] is not None else None for r in reports}
    common = shared.pop() if len(shared) == 1 else None
    out = {"n": sum(r["n"] for r in reports), "spacing": list(common) if common is not None else None}
    for metric in ("dice", "hd95"):
        n = sum(r[f"n_{metric}"] for r in reports)
        out[f"n_{metric}"] = n
        out[f"{metric}_undefined"] = sum(r[f"{metric}_undefined"] for r in reports)
        out[metric] = (sum(r[metric] * r[f"n_{metric}"] for r in reports if r[f"n_{metric}"]) / n
                       if n else float("nan"))
    return out

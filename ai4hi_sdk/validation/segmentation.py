"""Segmentation validation: Dice and HD95 of binary 3D masks via MONAI metrics, aggregates only.

Per-case values are computed in memory and reduced to a mean and a support count; they are not returned.
A case whose metric is undefined (empty ground truth for Dice; an empty mask on either side for HD95)
is left out of that metric's mean and counted in ``*_undefined``.
"""

from __future__ import annotations

from typing import Sequence, cast

import warnings

import numpy as np
import torch
from monai.metrics import DiceMetric, compute_hausdorff_distance


def _as_batch(masks) -> torch.Tensor:
    """List of (H, W, D) masks or an array (B, H, W, D) -> float tensor (B, 1, H, W, D)."""
    if isinstance(masks, (list, tuple)):
        arr = np.stack([np.asarray(m) for m in masks])
    else:
        arr = np.asarray(masks)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"expected binary 3D masks (B, H, W, D), got shape {arr.shape}")
    return torch.as_tensor(arr != 0, dtype=torch.float32)[:, None]


def case_spacings(spacing, n: int) -> list[list[float]] | None:
    """``spacing`` as one ``[slice, row, column]`` list per case: it may be one spacing shared by all
    ``n`` cases, a sequence of ``n`` per-case spacings, or None (voxels)."""
    if spacing is None:
        return None
    values = list(spacing)
    if values and isinstance(values[0], (Sequence, np.ndarray)):
        if len(values) != n:
            raise ValueError(f"{len(values)} per-case spacings for {n} cases")
        return [[float(v) for v in s] for s in values]
    return [[float(v) for v in values] for _ in range(n)]


def common_spacing(spacing) -> list[float] | None:
    """The one spacing all cases share, or None if none was given or the cases differ."""
    if spacing is None:
        return None
    values = list(spacing)
    if values and isinstance(values[0], (Sequence, np.ndarray)):
        distinct = {tuple(float(v) for v in s) for s in values}
        return list(distinct.pop()) if len(distinct) == 1 else None
    return [float(v) for v in values]


def segmentation_report(pred_masks, true_masks, *, spacing=None) -> dict:
    """Mean Dice and mean HD95 (in the units of ``spacing``, voxels if None) over cases.

    ``spacing``: one ``(slice, row, column)`` spacing for every case, or one per case (each case's
    HD95 in its own millimetres). Returns ``{"n", "dice", "n_dice", "dice_undefined", "hd95",
    "n_hd95", "hd95_undefined", "spacing"}`` (``spacing``: the shared one, None if per case differs).
    """
    pred, true = _as_batch(pred_masks), _as_batch(true_masks)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != ground truth shape {tuple(true.shape)}")
    # a batch-first tensor in gives one tensor out (MONAI's IterationMetric.__call__ is annotated for lists too)
    dice_t = cast(torch.Tensor, DiceMetric(include_background=True, reduction="none", ignore_empty=True)(pred, true))
    dice = dice_t.ravel().numpy()
    with warnings.catch_warnings():  # empty masks are handled below; MONAI's deprecation notice is internal
        warnings.filterwarnings("ignore", message=".*is all 0.*")
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd_t = compute_hausdorff_distance(pred, true, include_background=True, percentile=95,
                                          spacing=case_spacings(spacing, int(pred.shape[0])))
    hd = hd_t.ravel().numpy().astype(np.float64)
    empty = (pred.flatten(1).sum(1) == 0) | (true.flatten(1).sum(1) == 0)
    hd[empty.numpy()] = np.nan
    dice_ok, hd_ok = np.isfinite(dice), np.isfinite(hd)
    n = int(pred.shape[0])
    return {
        "n": n,
        "dice": float(dice[dice_ok].mean()) if dice_ok.any() else float("nan"),
        "n_dice": int(dice_ok.sum()),
        "dice_undefined": int(n - dice_ok.sum()),
        "hd95": float(hd[hd_ok].mean()) if hd_ok.any() else float("nan"),
        "n_hd95": int(hd_ok.sum()),
        "hd95_undefined": int(n - hd_ok.sum()),
        "spacing": common_spacing(spacing),
    }

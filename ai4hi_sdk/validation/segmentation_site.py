"""What a site computes in a segmentation validation task (pure core, no NVFlare).

:func:`site_segmentation_report` turns the binary masks the candidate and the champion predicted on
the site's fixed test split into aggregates only, in the same wire form as classification
(:mod:`ai4hi_sdk.validation.site_report`: roots ``candidate``, ``champion``, ``paired``, ``meta``):

* per model: :func:`~ai4hi_sdk.validation.segmentation.segmentation_report` (mean Dice, mean HD95,
  support ``n`` and how many cases each metric was undefined for) and a subgroup audit by sex / age
  band / manufacturer with the classification audit's suppression rules: a cell with fewer than
  ``k`` cases is suppressed and not named (only the number of suppressed cells leaves); when exactly
  one cell of an attribute is under ``k`` the next smallest is suppressed too; within a shown cell a
  metric is shown only when at least ``k`` of its cases define it; with ``dp_count_epsilon`` the
  shown ``n`` is Laplace-noised;
* paired: candidate-minus-champion mean Dice over the cases where Dice is defined (non-empty ground
  truth: the same cases for both models), with a paired t confidence interval and the variance of
  the mean difference (what the decision engine's per-site and pooled rules use).

Per-case values are computed in memory and never returned.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, cast

import numpy as np
from scipy import stats

from ai4hi_sdk.validation.subgroups import hidden_levels

# ai4hi_sdk.validation.segmentation (MONAI, torch) is imported where used: the decision engine and the
# reports only need is_segmentation_report and stay light

#: a model report's metric entries (everything else in it is a subgroup or a count)
SEGMENTATION_METRICS = ("dice", "hd95")


def case_dice(pred_masks, true_masks) -> np.ndarray:
    """Per-case Dice (NaN where the ground truth is empty), in memory only."""
    import torch
    from monai.metrics import DiceMetric

    from ai4hi_sdk.validation.segmentation import _as_batch

    pred, true = _as_batch(pred_masks), _as_batch(true_masks)
    # a batch-first tensor in gives one tensor out (MONAI's IterationMetric.__call__ is annotated for lists too)
    dice = cast(torch.Tensor, DiceMetric(include_background=True, reduction="none", ignore_empty=True)(pred, true))
    return dice.ravel().numpy()


def segmentation_subgroup_audit(pred_masks: Sequence[np.ndarray], true_masks: Sequence[np.ndarray],
                                attributes: Mapping[str, Sequence[str]], *, min_count: int = 10,
                                spacing: Sequence[float] | None = None, dp_epsilon: float | None = None,
                                seed: int = 0) -> dict[str, dict]:
    """Egress form ``{attr: {"cells": {value: {"n", "dice", "hd95"}}, "suppressed_cells": int}}``.

    ``spacing``: one spacing for all cases or one per case (see ``segmentation_report``)."""
    from ai4hi_sdk.validation.segmentation import case_spacings, segmentation_report

    if dp_epsilon is not None and dp_epsilon <= 0:
        raise ValueError("dp_epsilon must be > 0")
    rng = np.random.default_rng(seed)
    n = len(pred_masks)
    per_case = case_spacings(spacing, n)
    out: dict[str, dict] = {}
    for attr, values in attributes.items():
        vals = np.array(["unknown" if v is None else str(v) for v in values])
        if vals.size != n:
            raise ValueError(f"attribute {attr!r} has {vals.size} values for {n} cases")
        hidden = hidden_levels(vals, min_count)
        cells: dict[str, dict] = {}
        for value in sorted(set(vals.tolist()) - hidden):
            idx = np.flatnonzero(vals == value)
            rep = segmentation_report([pred_masks[int(i)] for i in idx], [true_masks[int(i)] for i in idx],
                                      spacing=None if per_case is None else [per_case[i] for i in idx])
            cell: dict[str, Any] = {"n": int(idx.size)}
            for metric in SEGMENTATION_METRICS:
                cell[metric] = rep[metric] if rep[f"n_{metric}"] >= min_count else None
            if dp_epsilon is not None:
                cell["n"] = max(0, int(round(cell["n"] + rng.laplace(0.0, 1.0 / dp_epsilon))))
            cells[value] = cell
        out[attr] = {"cells": cells, "suppressed_cells": len(hidden)}
    return out


def paired_dice_difference(pred_candidate, pred_champion, true_masks, *, ci: float = 0.95) -> dict:
    """Candidate-minus-champion mean Dice over cases with a defined Dice, paired t interval.

    Returns ``{"n", "delta", "variance", "ci": [lo, hi], "p_value"}`` or ``{"undefined": 1.0}``
    with fewer than 2 such cases.
    """
    d_cand, d_champ = case_dice(pred_candidate, true_masks), case_dice(pred_champion, true_masks)
    ok = np.isfinite(d_cand) & np.isfinite(d_champ)
    diff = (d_cand - d_champ)[ok].astype(np.float64)
    n = int(diff.size)
    if n < 2:
        return {"undefined": 1.0}
    delta = float(diff.mean())
    variance = float(diff.var(ddof=1) / n)
    se = math.sqrt(variance)
    t_crit = float(stats.t.ppf(0.5 + ci / 2, df=n - 1))
    if se > 0:
        p_value = float(2 * stats.t.sf(abs(delta) / se, df=n - 1))
    else:
        p_value = 1.0 if delta == 0 else 0.0
    return {"n": n, "delta": delta, "variance": variance, "ci": [delta - t_crit * se, delta + t_crit * se],
            "p_value": p_value}


def segmentation_model_report(pred_masks, true_masks, attributes: Mapping[str, Sequence[str]], *,
                              min_count: int = 10, spacing: Sequence[float] | None = None,
                              dp_count_epsilon: float | None = None, seed: int = 0) -> dict:
    """Aggregates of one model on one site's test split (see the module docstring)."""
    from ai4hi_sdk.validation.segmentation import segmentation_report

    report = segmentation_report(pred_masks, true_masks, spacing=spacing)
    report.pop("spacing", None)  # stated once, in the payload's meta
    return {**report, "subgroups": segmentation_subgroup_audit(
        list(pred_masks), list(true_masks), attributes, min_count=min_count, spacing=spacing,
        dp_epsilon=dp_count_epsilon, seed=seed)}


def site_segmentation_report(true_masks, pred_candidate, pred_champion, attributes: Mapping[str, Sequence[str]], *,
                             min_count: int = 10, ci: float = 0.95, spacing: Sequence[float] | None = None,
                             dp_count_epsilon: float | None = None, seed: int = 0) -> dict:
    """Nested aggregate report of candidate vs champion masks on one site's fixed test split.

    Returns ``{"candidate": ..., "champion": ..., "paired": ..., "meta": {"k", "ci", "threshold",
    "segmentation": 1, "hd95_in_mm": 0|1, "spacing": [..]}}``. Nothing per case: with per-case
    spacings (each case's HD95 in its own mm) ``meta`` states a spacing only if all cases share it.
    """
    from ai4hi_sdk.validation.segmentation import common_spacing

    kw: dict[str, Any] = dict(min_count=min_count, spacing=spacing, dp_count_epsilon=dp_count_epsilon, seed=seed)
    meta: dict[str, Any] = {"k": int(min_count), "ci": float(ci), "threshold": 0.5, "segmentation": 1,
                            "hd95_in_mm": int(spacing is not None)}
    shared = common_spacing(spacing)
    if shared is not None:
        meta["spacing"] = shared
    return {
        "candidate": segmentation_model_report(pred_candidate, true_masks, attributes, **kw),
        "champion": segmentation_model_report(pred_champion, true_masks, attributes, **kw),
        "paired": paired_dice_difference(pred_candidate, pred_champion, true_masks, ci=ci),
        "meta": meta,
    }


def is_segmentation_report(report: Mapping[str, Any]) -> bool:
    """Whether a site's (unflattened) validation report is a segmentation one."""
    return bool((report.get("meta") or {}).get("segmentation")) or "dice" in (report.get("candidate") or {})

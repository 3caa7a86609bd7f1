"""A third task kind in one module: regression (e.g. a lesion's size in mm predicted from its image).

Everything the SDK asks of a task kind is here; registering it is one call, made where the SDK runs
(the lead's tools and every site: a task kind computes what leaves a site, so it ships with the SDK
or a package the site installs, never inside a job's code)::

    from ai4hi_sdk.tasks.registry import register_task
    register_task(RegressionTask())

Then a job spec may say ``task: regression`` (its trainer's ``predict_test`` returns predicted and
true values, shape ``(n,)``, and the subgroup attributes), and validation, the decision engine,
model cards and the HTML report work on MAE:

* per model: ``n``, ``mae`` with a t interval (``mae_ci``), ``r2``, and a subgroup audit (MAE and
  R² per cell; a cell with fewer than k cases is suppressed and not named, with complementary
  suppression; optionally Laplace-noised ``n``);
* paired: candidate-minus-champion MAE over the same cases, paired t interval of the per-case
  absolute-error differences and the variance of the mean difference (what the per-site and
  random-effects pooled rules use);
* evidence: MAE, **lower is better**: the policy's ``auroc_delta_lower_bound_gt: t`` then needs the
  interval's upper bound below ``-t`` (the candidate lowers the error), ``retrain_if.auroc_below``
  is a ceiling. No operating point: the safety floors do not apply.

The evidence, the model-card rows and the report's table and plots are the base class's defaults,
built from ``metric`` and ``report_columns``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from ai4hi_sdk.tasks.base import ReportSettings, TaskStrategy, SitePredictions
from ai4hi_sdk.validation.scores import ScoreMetric
from ai4hi_sdk.validation.subgroups import hidden_levels

#: mean absolute error, in the target's unit; the candidate must lower it
MAE = ScoreMetric("mae", "MAE", "regression", higher_is_better=False)


def mean_with_ci(x: np.ndarray, ci: float) -> tuple[float, float, list[float]]:
    """Mean of ``x`` ``(n,)``, the variance of that mean and its t interval (n >= 2)."""
    n = x.size
    mean, variance = float(x.mean()), float(x.var(ddof=1) / n)
    half = float(stats.t.ppf(0.5 + ci / 2, df=n - 1)) * math.sqrt(variance)
    return mean, variance, [mean - half, mean + half]


def r_squared(truth: np.ndarray, pred: np.ndarray) -> float | None:
    """Coefficient of determination (None when the truth is constant)."""
    ss_tot = float(((truth - truth.mean()) ** 2).sum())
    return None if ss_tot == 0 else 1.0 - float(((truth - pred) ** 2).sum()) / ss_tot


def model_report(truth: np.ndarray, pred: np.ndarray, attributes: Mapping[str, Sequence[str]], *, min_count: int,
                 ci: float, dp_count_epsilon: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Aggregates of one model on one site's test split (see the module docstring)."""
    err = np.abs(pred - truth)
    mae, _, interval = mean_with_ci(err, ci)
    rng = np.random.default_rng(seed)
    subgroups: dict[str, dict] = {}
    for attr, values in attributes.items():
        vals = np.array(["unknown" if v is None else str(v) for v in values])
        if vals.size != truth.size:
            raise ValueError(f"attribute {attr!r} has {vals.size} values for {truth.size} cases")
        hidden = hidden_levels(vals, min_count)
        cells = {}
        for value in sorted(set(vals.tolist()) - hidden):
            sel = vals == value
            n = int(sel.sum())
            if dp_count_epsilon is not None:
                n = max(0, int(round(n + rng.laplace(0.0, 1.0 / dp_count_epsilon))))
            cells[value] = {"n": n, "mae": float(err[sel].mean()), "r2": r_squared(truth[sel], pred[sel])}
        subgroups[attr] = {"cells": cells, "suppressed_cells": len(hidden)}
    return {"n": int(truth.size), "mae": mae, "mae_ci": interval, "r2": r_squared(truth, pred),
            "subgroups": subgroups}


def paired_mae_difference(truth: np.ndarray, candidate: np.ndarray, champion: np.ndarray, *, ci: float) -> dict:
    """Candidate-minus-champion MAE, paired t interval: ``{"n", "delta", "variance", "ci", "p_value"}``,
    or ``{"undefined": 1.0}`` with fewer than 2 cases."""
    diff = np.abs(candidate - truth) - np.abs(champion - truth)
    if diff.size < 2:
        return {"undefined": 1.0}
    delta, variance, interval = mean_with_ci(diff, ci)
    p_value = float(stats.ttest_1samp(diff, 0.0).pvalue) if variance > 0 else float(delta == 0)
    return {"n": int(diff.size), "delta": delta, "variance": variance, "ci": interval, "p_value": p_value}


class RegressionTask(TaskStrategy):
    """Continuous targets; evidence on MAE (lower is better)."""

    name = "regression"
    metric = MAE
    report_columns = (("mae", "MAE"), ("r2", "R²"))
    report_marker = "regression"  # meta flag of its site reports
    undefined_note = "MAE change undefined (fewer than 2 test cases)"
    summary_columns = ("val_mae", "val_loss", "val_samples")
    site_files = ("labels.csv (a numeric label column)",)

    def site_report(self, test: SitePredictions, settings: ReportSettings) -> dict:
        truth = np.asarray(test.truth, dtype=np.float64).ravel()
        cand = np.asarray(test.candidate, dtype=np.float64).ravel()
        champ = np.asarray(test.champion, dtype=np.float64).ravel()
        if not truth.size == cand.size == champ.size:
            raise ValueError(f"{truth.size} true values but {cand.size} / {champ.size} predictions")
        cfg, k = settings.config, settings.min_count
        kw = dict(min_count=k, ci=cfg.ci, dp_count_epsilon=cfg.dp_count_epsilon, seed=cfg.seed)
        return {"candidate": model_report(truth, cand, test.attributes, **kw),
                "champion": model_report(truth, champ, test.attributes, **kw),
                "paired": paired_mae_difference(truth, cand, champ, ci=cfg.ci),
                "meta": {"k": int(k), "ci": float(cfg.ci), "regression": 1}}

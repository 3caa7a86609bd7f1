"""What a site computes in a validation task, and how it crosses the wire (pure core, no NVFlare).

:func:`site_validation_report` turns per-study predictions of the candidate and the champion on the
site's fixed test split into aggregates only:

* per model: :func:`~ai4hi_sdk.validation.classification.classification_report` (AUROC with DeLong CI,
  sensitivity/specificity at the operating point, ECE, Brier, support ``n``), a subgroup audit
  (:func:`~ai4hi_sdk.validation.subgroups.subgroup_audit`, cells under ``k`` suppressed) and a
  calibration curve whose bins with fewer than ``k`` studies are dropped;
* the paired DeLong candidate-minus-champion AUROC difference;
* at each model's own operating point (its threshold, chosen on the validation splits): confusion
  counts ``tp``/``tn``, calibration before/after its recalibration and, with the policy's
  thresholds, decision-curve counts (``net_benefit``).

Suppressed subgroup cells are not named in what leaves: only their number per attribute is
(``suppressed_cells``), so a rare category (one scanner model, one age band) is not revealed.

:func:`flatten_metrics` / :func:`unflatten_metrics` map the nested report to a flat
``{name: float}`` dict, the form NVFlare's METRICS payload carries and the egress log records
(names and values, hashed). :func:`check_aggregate_payload` is the server's guard: only names of the
known schema, only finite numbers, and a size that does not grow with the number of studies.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

from ai4hi_sdk.validation.classification import classification_report, paired_auroc_difference
from ai4hi_sdk.validation.subgroups import subgroup_audit

SEP = "|"
#: flattened-name prefixes a validation payload may use (anything else is rejected by the server)
REPORT_ROOTS = ("candidate", "champion", "paired", "meta")
DRIFT_ROOTS = ("drift", "meta")
_INT_KEYS = {"n", "positives", "k", "suppressed_cells", "dof", "n_permutations", "n_reference", "n_current",
             "calibration_bins", "dropped_bins", "tp", "tn"}
_INDEX = re.compile(r"^(.*)\[(\d+)\]$")


def calibration_curve(labels: np.ndarray, prob: np.ndarray, *, n_bins: int = 10, min_count: int = 10) -> dict:
    """Reliability diagram on ``n_bins`` equal-width bins of [0, 1].

    Returns ``{"bins": [{"lo", "hi", "n", "mean_predicted", "observed"}...], "dropped_bins": int}``;
    bins with fewer than ``min_count`` studies are dropped (counted, not shown).
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    idx = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    bins, dropped = [], 0
    for b in range(n_bins):
        sel = idx == b
        count = int(sel.sum())
        if count == 0:
            continue
        if count < min_count:
            dropped += 1
            continue
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": count,
                     "mean_predicted": float(p[sel].mean()), "observed": float(y[sel].mean())})
    return {"bins": bins, "dropped_bins": dropped}


def _egress_audit(audit: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Drop suppressed cells (names included); keep their count per attribute."""
    out: dict[str, dict] = {}
    for attr, cells in audit.items():
        shown = {v: {k: x for k, x in c.items() if k != "n_noised"} for v, c in cells.items() if not c.get("suppressed")}
        out[attr] = {"cells": shown, "suppressed_cells": sum(1 for c in cells.values() if c.get("suppressed"))}
    return out


def model_report(labels: np.ndarray, prob: np.ndarray, attributes: Mapping[str, Sequence[str]], *,
                 threshold: float = 0.5, min_count: int = 10, ci: float = 0.95, calibration_bins: int = 10,
                 dp_count_epsilon: float | None = None, seed: int = 0, calibration: Mapping[str, Any] | None = None,
                 net_benefit_thresholds: Sequence[float] | None = None) -> dict:
    """Aggregates of one model on one site's test split (see the module docstring).

    ``threshold`` is the model version's operating point on its raw scores. With ``calibration``
    (the version's recalibration map, :func:`~ai4hi_sdk.validation.calibration.fit_calibration`)
    every metric is of the recalibrated scores, the model as deployed (the threshold moves with the
    map, so sensitivity and specificity are the same), and ``calibration_summary`` holds ECE, Brier
    and calibration-in-the-large before and after. ``net_benefit`` (decision curve counts) is added
    when ``net_benefit_thresholds`` are given.
    """
    from ai4hi_sdk.validation.calibration import apply_calibration, calibrate_threshold, calibration_summary
    from ai4hi_sdk.validation.net_benefit import net_benefit_counts
    from ai4hi_sdk.validation.operating_point import confusion_at

    y = np.asarray(labels).astype(int).ravel()
    raw = np.asarray(prob, dtype=np.float64).ravel()
    prob = apply_calibration(raw, calibration)
    threshold = calibrate_threshold(threshold, calibration) if calibration else threshold
    report = classification_report(y, prob, threshold=threshold, ci=ci)
    report.pop("ci_method", None)  # a string; the method is stated in the payload's meta
    counts = confusion_at(prob, y, threshold)
    audit = subgroup_audit(y, prob, {a: list(v) for a, v in attributes.items()}, min_count=min_count,
                           threshold=threshold, dp_epsilon=dp_count_epsilon, seed=seed)
    out = {**report, "tp": counts["tp"], "tn": counts["tn"], "subgroups": _egress_audit(audit),
           "calibration": calibration_curve(y, prob, n_bins=calibration_bins, min_count=min_count),
           "calibration_summary": calibration_summary(y, raw, calibration), "recalibrated": calibration is not None}
    if net_benefit_thresholds is not None:
        out["net_benefit"] = net_benefit_counts(y, prob, net_benefit_thresholds, min_count=min_count)
    return out


def site_validation_report(labels, prob_candidate, prob_champion, attributes: Mapping[str, Sequence[str]], *,
                           threshold: float = 0.5, min_count: int = 10, ci: float = 0.95,
                           calibration_bins: int = 10, dp_count_epsilon: float | None = None,
                           seed: int = 0, champion_threshold: float | None = None,
                           candidate_calibration: Mapping[str, Any] | None = None,
                           champion_calibration: Mapping[str, Any] | None = None,
                           net_benefit_thresholds: Sequence[float] | None = None) -> dict:
    """Nested aggregate report of candidate vs champion on one site's fixed test split.

    Args:
        labels: shape ``(n,)`` in {0, 1}; ``prob_*``: shape ``(n,)`` predicted P(class 1).
        attributes: attribute name -> ``n`` category strings (sex, age band, manufacturer...).
        threshold: the candidate's operating point (raw score scale); ``champion_threshold`` the
            champion's (default: the same).
        candidate_calibration / champion_calibration: each version's recalibration map, if it has one.
        net_benefit_thresholds: the policy's decision-curve thresholds (adds ``net_benefit`` counts).

    Returns:
        ``{"candidate": model_report, "champion": model_report, "paired": {...} | {"error": 1.0},
        "meta": {"k", "threshold", "champion_threshold", "ci"}}``. Nothing per study. The paired AUROC
        change is of the raw scores (a monotone recalibration does not change an AUROC).
    """
    y = np.asarray(labels).astype(int).ravel()
    champion_threshold = threshold if champion_threshold is None else champion_threshold
    kw: dict[str, Any] = dict(min_count=min_count, ci=ci, calibration_bins=calibration_bins,
                              dp_count_epsilon=dp_count_epsilon, seed=seed,
                              net_benefit_thresholds=net_benefit_thresholds)
    out: dict[str, Any] = {
        "candidate": model_report(y, prob_candidate, attributes, threshold=threshold,
                                  calibration=candidate_calibration, **kw),
        "champion": model_report(y, prob_champion, attributes, threshold=champion_threshold,
                                 calibration=champion_calibration, **kw),
        "meta": {"k": int(min_count), "threshold": float(threshold), "champion_threshold": float(champion_threshold),
                 "ci": float(ci)},
    }
    if 0 < y.sum() < y.size:
        paired = paired_auroc_difference(y, prob_candidate, prob_champion, ci=ci)
        out["paired"] = {k: v for k, v in paired.items() if k not in ("auroc_candidate", "auroc_champion")}
    else:
        out["paired"] = {"undefined": 1.0}  # one class only: no AUROC, no paired test
    return out


# ------------------------------------------------------------------ wire format


def flatten_metrics(nested: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dicts/lists of numbers -> ``{"a|b|c[0]": float}``; ``None``/NaN values are left out
    (an undefined metric is absent, never NaN). Booleans become 1.0/0.0."""
    flat: dict[str, float] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                key = str(key)
                if SEP in key or "[" in key:
                    key = key.replace(SEP, "/").replace("[", "(").replace("]", ")")
                walk(sub, f"{name}{SEP}{key}" if name else key)
        elif isinstance(value, (list, tuple)):
            for i, sub in enumerate(value):
                walk(sub, f"{name}[{i}]")
        elif value is None:
            return
        elif isinstance(value, (bool, int, float, np.integer, np.floating)):
            x = float(value)
            if math.isfinite(x):
                flat[name] = x
        else:
            raise TypeError(f"{name}: only numbers can leave a site, got {type(value).__name__}")

    walk(nested, prefix)
    return flat


def unflatten_metrics(flat: Mapping[str, float]) -> dict[str, Any]:
    """Inverse of :func:`flatten_metrics` (counts named in ``_INT_KEYS`` come back as ints)."""
    root: dict[str, Any] = {}
    for name in sorted(flat):
        parts = name.split(SEP)
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            m = _INDEX.match(part)
            key, index = (m.group(1), int(m.group(2))) if m else (part, None)
            value = flat[name]
            if index is None:
                if last:
                    node[key] = int(value) if key in _INT_KEYS else value
                else:
                    node = node.setdefault(key, {})
            else:
                lst = node.setdefault(key, [])
                while len(lst) <= index:
                    lst.append(None)
                if last:
                    lst[index] = value
                else:
                    if lst[index] is None:
                        lst[index] = {}
                    node = lst[index]
    return root


def check_aggregate_payload(metrics: Mapping[str, Any], roots: Sequence[str], *, max_entries: int = 5000) -> str | None:
    """Why a site's aggregate payload must be rejected (``None``: acceptable).

    Only finite numbers under the allowed ``roots``, at most ``max_entries`` of them (a fixed
    number per attribute value and bin: a payload that grows with the number of studies is not
    an aggregate).
    """
    if len(metrics) > max_entries:
        return f"{len(metrics)} metric entries (more than {max_entries}): not an aggregate"
    for name, value in metrics.items():
        if not isinstance(name, str) or name.split(SEP, 1)[0].split("[", 1)[0] not in roots:
            return f"metric {name!r} is outside the validation schema ({', '.join(roots)})"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            return f"metric {name!r} is not a finite number"
    return None

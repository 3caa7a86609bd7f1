"""A model version's operating point, chosen from per-class score histograms the sites send.

The binning is fixed and documented so that sites' histograms can be summed (by secure
aggregation, or on the server after small-count merging at the site):

* scores are P(positive) in [0, 1]; a score's bin is taken on the logit scale
  ``z = log(p / (1 - p))``: bin 0 is ``z < -8``, bins ``1..320`` are ``[-8 + 0.05 (i - 1),
  -8 + 0.05 i)``, bin 321 is ``z >= 8`` (:data:`N_BINS` = 322). Equal steps in ``z`` give fine
  bins where the probabilities crowd (near 0 and 1) and keep the calibration fit
  (:mod:`~ai4hi_sdk.validation.calibration`) well conditioned;
* a candidate threshold is a bin's lower edge, :func:`edge_probabilities`\\ ``()[j]``: "positive"
  means ``p >= edge[j]``, i.e. the bins ``j..321``. Sensitivity at edge ``j`` is the share of
  positives in bins ``>= j``, specificity the share of negatives in bins ``< j``.

With exact counts (secure aggregation, or a single site) the chosen threshold is the one computed
from the pooled raw scores, up to one bin: for a sensitivity target the raw threshold lies in
``[edge[j], edge[j + 1])`` (see ``tests/validation/test_operating_point.py``).

Without secure aggregation a site merges adjacent bins into groups of at least ``k`` studies
(both classes together, :func:`k_groups`), the rule every other cell a site sends follows (a
calibration-curve bin, a subgroup cell): each group's class counts leave, never a smaller cell.

* For the threshold (``histogram``) the group's counts are placed where they err on the safe side:
  its positives at the group's lowest bin (sensitivity at any edge can only be under-estimated),
  its negatives at the highest (the same for specificity), so a threshold chosen for
  "sensitivity >= X" from merged histograms still reaches X on the sites' validation data, and is
  at most one group (about k studies per site) below the one exact counts would give.
* For the recalibration (``calibration``) both classes of a group sit at the group's
  count-weighted mean bin with the group's mean logit: the usual binned fit (averaging each class
  apart would pull the classes away from each other and make the fit over-confident).

Grouping both classes (not each class apart, :func:`k_merge`) keeps every study in the sums: a
site with fewer than ``k`` positives still sends them, inside groups of ``k`` studies.

Site side: :func:`operating_point_payload` (validation split only). Server side:
:func:`sum_histograms` then :func:`choose_operating_point`.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

import numpy as np

LOGIT_MIN, LOGIT_MAX, LOGIT_STEP = -8.0, 8.0, 0.05
#: number of score bins: underflow, 320 bins of 0.05 on the logit scale, overflow
N_BINS = int(round((LOGIT_MAX - LOGIT_MIN) / LOGIT_STEP)) + 2
#: the only split an operating point (and a recalibration) may be fitted on
FIT_SPLIT = "validation"
#: flattened-name roots of an operating-point payload (for ``check_aggregate_payload``)
OPERATING_POINT_ROOTS = ("histogram", "calibration", "meta")
Target = Literal["sensitivity", "specificity", "youden"]


def edge_logits() -> np.ndarray:
    """Lower edges of the bins on the logit scale, shape ``(N_BINS + 1,)``: ``-inf, -8, ..., 8, +inf``."""
    inner = LOGIT_MIN + LOGIT_STEP * np.arange(N_BINS - 1)
    return np.concatenate([[-np.inf], inner, [np.inf]])


def edge_probabilities() -> np.ndarray:
    """Bin edges as probabilities, shape ``(N_BINS + 1,)``: ``0, sigmoid(-8), ..., sigmoid(8), 1``."""
    z = edge_logits()
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def bin_centres_logit() -> np.ndarray:
    """A representative logit per bin, shape ``(N_BINS,)`` (the open end bins get their inner edge -/+ half a step)."""
    inner = LOGIT_MIN + LOGIT_STEP * (np.arange(N_BINS - 2) + 0.5)
    return np.concatenate([[LOGIT_MIN - LOGIT_STEP / 2], inner, [LOGIT_MAX + LOGIT_STEP / 2]])


def score_bins(prob: np.ndarray) -> np.ndarray:
    """Bin index (int, ``0..N_BINS-1``) of each probability."""
    p = np.asarray(prob, dtype=np.float64).ravel()
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("scores must be probabilities in [0, 1]")
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-p)  # -inf at 0, +inf at 1
    idx = np.floor((z - LOGIT_MIN) / LOGIT_STEP) + 1
    return np.clip(np.nan_to_num(idx, nan=0.0, neginf=0.0, posinf=N_BINS - 1), 0, N_BINS - 1).astype(int)


def _logits(p: np.ndarray) -> np.ndarray:
    """logit of probabilities clipped to [1e-12, 1 - 1e-12] (finite: |z| <= 27.7)."""
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(q) - np.log1p(-q)


def class_histograms(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-class counts ``(positives, negatives)``, each shape ``(N_BINS,)`` int64."""
    y, p = _checked(scores, labels)
    b = score_bins(p)
    return (np.bincount(b[y == 1], minlength=N_BINS).astype(np.int64),
            np.bincount(b[y == 0], minlength=N_BINS).astype(np.int64))


def _checked(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{p.size} scores for {y.size} labels")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, p


def k_groups(counts: np.ndarray, k: int) -> list[list[int]]:
    """Adjacent non-empty bins (from low scores to high) grouped until each group holds ``>= k``
    studies; a last group under ``k`` joins the one before it; no group if the total is under ``k``."""
    counts = np.asarray(counts)
    if counts.sum() < k:
        return []
    groups: list[list[int]] = []
    current: list[int] = []
    acc = 0
    for b in np.flatnonzero(counts):
        current.append(int(b))
        acc += int(counts[b])
        if acc >= k:
            groups.append(current)
            current, acc = [], 0
    if current:  # tail under k: fold into the previous group
        groups[-1].extend(current)
    return groups


def joint_merge(pos: np.ndarray, neg: np.ndarray, zpos: np.ndarray, zneg: np.ndarray,
                k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Merge both classes into groups of ``>= k`` studies (:func:`k_groups` of ``pos + neg``).

    Returns ``(histogram, calibration)``: ``histogram`` puts a group's positives at its lowest bin
    and its negatives at its highest (conservative rates at every edge); ``calibration`` puts both
    classes at the group's count-weighted mean bin, each class's logit sum being its count times
    the group's mean logit (no class is averaged over fewer than ``k`` studies)."""
    pos, neg = np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)
    zpos, zneg = np.asarray(zpos, dtype=np.float64), np.asarray(zneg, dtype=np.float64)
    hist = {"pos": np.zeros_like(pos), "neg": np.zeros_like(neg)}
    cal = {"pos": np.zeros_like(pos), "neg": np.zeros_like(neg), "pos_logit_sum": np.zeros(pos.shape),
           "neg_logit_sum": np.zeros(neg.shape)}
    total = pos + neg
    for g in k_groups(total, k):
        n_pos, n_neg, n = int(pos[g].sum()), int(neg[g].sum()), int(total[g].sum())
        hist["pos"][g[0]] += n_pos
        hist["neg"][g[-1]] += n_neg
        centre = int(round(float((total[g] * np.array(g)).sum()) / n))
        mean_z = float(zpos[g].sum() + zneg[g].sum()) / n
        cal["pos"][centre] += n_pos
        cal["neg"][centre] += n_neg
        cal["pos_logit_sum"][centre] += mean_z * n_pos
        cal["neg_logit_sum"][centre] += mean_z * n_neg
    return hist, cal


def k_merge(counts: np.ndarray, k: int, place: Literal["low", "high", "mean"],
            sums: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Merge adjacent bins of one histogram (from low scores to high) until each group holds ``>= k``
    studies (:func:`k_groups`).

    Each group's total is put in one bin: its lowest (``"low"``), its highest (``"high"``) or the bin
    of its count-weighted mean index (``"mean"``); ``sums`` (per-bin sums of a value, e.g. the
    logits) follow their counts. A histogram whose total is under ``k`` is all zeros. Returns
    ``(counts, sums)`` (``sums`` None if not given).
    """
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros_like(counts)
    out_sums = None if sums is None else np.zeros(counts.shape, dtype=np.float64)
    for g in k_groups(counts, k):
        total = int(counts[g].sum())
        if place == "low":
            target = g[0]
        elif place == "high":
            target = g[-1]
        else:
            target = int(round(float((counts[g] * np.array(g)).sum()) / total))
        out[target] += total
        if out_sums is not None:
            out_sums[target] += float(np.asarray(sums)[g].sum())
    return out, out_sums


def operating_point_payload(scores, labels, *, split: str, min_count: int | None = 10) -> dict[str, Any]:
    """What a site sends to choose a model's operating point and fit its recalibration.

    Args:
        scores: shape ``(n,)`` P(positive) of the model on the site's **validation** split.
        labels: shape ``(n,)`` in {0, 1}.
        split: must be ``"validation"``: an operating point chosen on the test split would be judged
            on the data it was tuned on.
        min_count: ``k``; every group of bins sent holds ``>= k`` studies (both classes together,
            see :func:`joint_merge`). ``None`` only when the payload is secure-aggregated (exact counts).

    Returns:
        ``{"histogram": {"pos": [N_BINS], "neg": [N_BINS]}`` (counts, merged conservatively: for the
        threshold), ``"calibration": {"pos", "neg", "pos_logit_sum", "neg_logit_sum"}`` (counts and
        sums of the scores' logits, both classes of a group at its mean: for the recalibration fit),
        ``"meta": {"bins", "k", "exact"}}``. Fixed size (6 x N_BINS + 3 numbers), nothing per study.
    """
    if split != FIT_SPLIT:
        raise ValueError(f"an operating point is chosen on the validation split, not on {split!r}")
    y, p = _checked(scores, labels)
    b, z = score_bins(p), _logits(p)
    pos, neg = (np.bincount(b[y == c], minlength=N_BINS).astype(np.int64) for c in (1, 0))
    zpos, zneg = (np.bincount(b[y == c], weights=z[y == c], minlength=N_BINS) for c in (1, 0))
    if min_count is None:
        hist = {"pos": pos, "neg": neg}
        cal = {"pos": pos, "neg": neg, "pos_logit_sum": zpos, "neg_logit_sum": zneg}
    else:
        if min_count < 1:
            raise ValueError("min_count must be >= 1 (None only under secure aggregation)")
        hist, cal = joint_merge(pos, neg, zpos, zneg, min_count)
    listed = lambda h: {c: [float(x) for x in v] for c, v in h.items()}  # noqa: E731
    return {"histogram": listed(hist), "calibration": listed(cal),
            "meta": {"bins": N_BINS, "k": 0 if min_count is None else int(min_count),
                     "exact": int(min_count is None)}}


def _histogram_arrays(h: Mapping[str, Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = (np.asarray(h.get(c, []), dtype=np.float64) for c in ("pos", "neg"))
    if pos.shape != (N_BINS,) or neg.shape != (N_BINS,):
        raise ValueError(f"{where}: expected {N_BINS} bins per class, got {pos.size} and {neg.size}")
    if (pos < 0).any() or (neg < 0).any() or not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError(f"{where}: counts must be finite and >= 0")
    return pos, neg


#: the arrays of each part of a payload (all of length N_BINS)
PAYLOAD_PARTS = {"histogram": ("pos", "neg"), "calibration": ("pos", "neg", "pos_logit_sum", "neg_logit_sum")}


def sum_histograms(payloads: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the sites' payloads (``{site: operating_point_payload(...)}`` as received, e.g. after
    :func:`~ai4hi_sdk.validation.site_report.unflatten_metrics`). A site whose payload has another
    binning, a missing array or a negative count is an error naming the site. Returns the payload's
    shape plus ``"sites"``."""
    total = {part: {c: np.zeros(N_BINS) for c in arrays} for part, arrays in PAYLOAD_PARTS.items()}
    ks, exact = [], True
    for site, payload in sorted(payloads.items()):
        meta = payload.get("meta") or {}
        if int(meta.get("bins", -1)) != N_BINS:
            raise ValueError(f"site {site}: score histogram has {meta.get('bins')} bins, this SDK uses {N_BINS}")
        for part, arrays in PAYLOAD_PARTS.items():
            for c in arrays:
                v = np.asarray((payload.get(part) or {}).get(c, []), dtype=np.float64)
                if v.shape != (N_BINS,) or not np.isfinite(v).all():
                    raise ValueError(f"site {site}: {part}.{c} must be {N_BINS} finite numbers")
                if not c.endswith("_sum") and (v < 0).any():
                    raise ValueError(f"site {site}: {part}.{c} has a negative count")
                total[part][c] += v
        ks.append(int(meta.get("k", 0)))
        exact &= bool(meta.get("exact", 0))
    return {**{part: {c: v.tolist() for c, v in h.items()} for part, h in total.items()},
            "meta": {"bins": N_BINS, "k": max(ks, default=0), "exact": int(exact)}, "sites": sorted(payloads)}


def rates_at_edges(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity at every edge ``j = 0..N_BINS`` (positive means bins ``>= j``)."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    p_tot, n_tot = pos.sum(), neg.sum()
    if p_tot <= 0 or n_tot <= 0:
        raise ValueError("an operating point needs positives and negatives in the histograms")
    tp = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])  # positives in bins >= j
    tn = np.concatenate([[0.0], np.cumsum(neg)])  # negatives in bins < j
    return tp / p_tot, tn / n_tot


def choose_operating_point(histogram: Mapping[str, Sequence[float]], target: Target = "sensitivity",
                           value: float | None = 0.9) -> dict[str, Any]:
    """The threshold for the policy's target, from (summed) per-class histograms.

    * ``"sensitivity"``: the highest edge with sensitivity ``>= value`` (best specificity among them);
    * ``"specificity"``: the lowest edge with specificity ``>= value`` (best sensitivity among them);
    * ``"youden"``: the edge maximising sensitivity + specificity - 1 (the lowest such edge on ties).

    Returns ``{"threshold", "threshold_logit", "edge", "next_edge_threshold", "target", "value",
    "sensitivity", "specificity", "youden_j", "positives", "negatives", "bins"}``: the threshold as a
    probability (positive means ``score >= threshold``), the rates on the histograms it came from.
    """
    pos, neg = _histogram_arrays(histogram, "histogram")
    sens, spec = rates_at_edges(pos, neg)
    if target in ("sensitivity", "specificity"):
        if value is None or not 0 < value <= 1:
            raise ValueError(f"target {target} needs a value in (0, 1], got {value}")
        if target == "sensitivity":
            j = int(np.flatnonzero(sens >= value - 1e-12).max())
        else:
            j = int(np.flatnonzero(spec >= value - 1e-12).min())
        target_value: float | None = float(value)
    elif target == "youden":
        j = int(np.argmax(sens + spec - 1))
        target_value = None
    else:
        raise ValueError(f"unknown operating-point target {target!r} (sensitivity, specificity, youden)")
    probs, logits = edge_probabilities(), edge_logits()
    return {"threshold": float(probs[j]), "threshold_logit": float(logits[j]), "edge": j,
            "next_edge_threshold": float(probs[min(j + 1, N_BINS)]), "target": target,
            "value": target_value,
            "sensitivity": float(sens[j]), "specificity": float(spec[j]), "youden_j": float(sens[j] + spec[j] - 1),
            "positives": float(pos.sum()), "negatives": float(neg.sum()), "bins": N_BINS}


def operating_point_from_payloads(payloads: Mapping[str, Mapping[str, Any]], target: Target = "sensitivity",
                                  value: float | None = 0.9) -> dict[str, Any]:
    """Server side in one call: sum the sites' payloads and choose the threshold; the result also
    says which sites contributed, whether the counts were exact and the ``k`` used."""
    total = sum_histograms(payloads)
    op = choose_operating_point(total["histogram"], target, value)
    return {**op, "split": FIT_SPLIT, "sites": total["sites"], "exact_counts": bool(total["meta"]["exact"]),
            "k": total["meta"]["k"]}


def confusion_at(scores, labels, threshold: float) -> dict[str, int]:
    """``{"tp", "positives", "tn", "negatives"}`` with positive meaning ``score >= threshold``."""
    y = np.asarray(labels).astype(int).ravel()
    pred = np.asarray(scores, dtype=np.float64).ravel() >= threshold
    return {"tp": int((pred & (y == 1)).sum()), "positives": int((y == 1).sum()),
            "tn": int((~pred & (y == 0)).sum()), "negatives": int((y == 0).sum())}

"""Operating point from the sites' per-class score histograms vs the threshold computed centrally
from the pooled raw scores (scikit-learn's ROC curve as the independent reference)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from ai4hi_sdk.validation.operating_point import (
    N_BINS,
    OPERATING_POINT_ROOTS,
    bin_centres_logit,
    choose_operating_point,
    edge_probabilities,
    joint_merge,
    k_merge,
    operating_point_from_payloads,
    operating_point_payload,
    score_bins,
    sum_histograms,
)
from ai4hi_sdk.validation.site_report import check_aggregate_payload, flatten_metrics, unflatten_metrics

EDGES = edge_probabilities()


def _sites(seed: int, k: int | None = None):
    """Three sites of different size, prevalence and separation; payloads through the wire form."""
    rng = np.random.default_rng(seed)
    payloads, scores, labels = {}, [], []
    for s in range(3):
        n = int(rng.integers(150, 400))
        y = (rng.random(n) < 0.3 + 0.1 * s).astype(int)
        p = 1 / (1 + np.exp(-(rng.normal(size=n) + (2 * y - 1) * (0.8 + 0.3 * s) - 0.8)))
        flat = flatten_metrics(operating_point_payload(p, y, split="validation", min_count=k))
        assert check_aggregate_payload(flat, OPERATING_POINT_ROOTS) is None
        payloads[f"site-{s}"] = unflatten_metrics(flat)
        scores.append(p)
        labels.append(y)
    return payloads, np.concatenate(scores), np.concatenate(labels)


def central(p, y, target, value=None):
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    if target == "sensitivity":
        i = np.flatnonzero(tpr >= value - 1e-12)[0]  # highest threshold reaching the sensitivity
    elif target == "specificity":
        # every threshold above the score of the negative that would break the specificity keeps it:
        # that score (the next ROC threshold) is the central boundary
        i = np.flatnonzero(fpr <= 1 - value + 1e-12)[-1] + 1  # (1 - 0.8 is 0.19999999999999996)
    else:
        i = int(np.argmax(tpr - fpr))
    return float(thr[i]), tpr, fpr


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target,value", [("sensitivity", 0.9), ("sensitivity", 0.8), ("specificity", 0.8)])
def test_federated_threshold_is_the_central_one_within_one_bin(seed, target, value):
    payloads, p, y = _sites(seed)
    op = operating_point_from_payloads(payloads, target, value)
    t_central, _, _ = central(p, y, target, value)
    j = op["edge"]
    assert op["exact_counts"] and op["sites"] == sorted(payloads) and op["split"] == "validation"
    if target == "sensitivity":  # the highest edge not above the central threshold: same bin
        assert EDGES[j] <= t_central < EDGES[j + 1]
        assert op["threshold"] == EDGES[j]
    else:  # the lowest edge above that boundary: it lies in the bin below
        assert EDGES[j - 1] <= t_central < EDGES[j]
    # the rates it reports are those of the pooled raw scores at that threshold
    pred = p >= op["threshold"]
    assert op["sensitivity"] == pytest.approx(pred[y == 1].mean())
    assert op["specificity"] == pytest.approx((~pred[y == 0]).mean())
    assert op["positives"] == (y == 1).sum() and op["negatives"] == (y == 0).sum()


@pytest.mark.parametrize("seed", range(6))
def test_youden_matches_the_central_optimum_within_one_bin_of_mass(seed):
    """J is flat near its maximum, so the arg max may move by a few bins; J itself is within the
    share of negatives in one bin of the central optimum (the bound the binning guarantees)."""
    payloads, p, y = _sites(seed)
    op = operating_point_from_payloads(payloads, "youden", None)
    _, tpr, fpr = central(p, y, "youden")
    best = float(np.max(tpr - fpr))
    neg_per_bin = np.bincount(score_bins(p[y == 0]), minlength=N_BINS).max() / (y == 0).sum()
    assert best - neg_per_bin - 1e-12 <= op["youden_j"] <= best + 1e-12
    pred = p >= op["threshold"]
    assert op["youden_j"] == pytest.approx(pred[y == 1].mean() + (~pred[y == 0]).mean() - 1)


@pytest.mark.parametrize("seed", range(6))
def test_k_merged_histograms_err_on_the_safe_side(seed):
    """Without secure aggregation a site sends groups of >= k studies (both classes together: every
    calibration bin it fills holds >= k, and no study is dropped); the threshold chosen for
    sensitivity >= 0.9 still reaches 0.9 on the pooled raw validation scores, is not above the exact
    one, and is close to it."""
    payloads, p, y = _sites(seed, k=10)
    for site in payloads.values():
        cal = site["calibration"]
        filled = np.asarray(cal["pos"]) + np.asarray(cal["neg"])
        assert ((filled == 0) | (filled >= 10)).all()
        assert sum(site["histogram"]["pos"]) == sum(cal["pos"]) and sum(site["histogram"]["neg"]) == sum(cal["neg"])
    assert sum(sum(s["histogram"]["pos"]) for s in payloads.values()) == (y == 1).sum()  # nothing dropped
    op = operating_point_from_payloads(payloads, "sensitivity", 0.9)
    exact = operating_point_from_payloads(_sites(seed)[0], "sensitivity", 0.9)
    assert not op["exact_counts"] and op["k"] == 10
    assert (p[y == 1] >= op["threshold"]).mean() >= 0.9
    assert op["threshold"] <= exact["threshold"]
    # at most about one group of k studies per site lower: specificity lost is a few groups' negatives
    lost = ((p[y == 0] >= op["threshold"]) & (p[y == 0] < exact["threshold"])).sum()
    assert lost <= 3 * 2 * 10, lost
    spec = operating_point_from_payloads(payloads, "specificity", 0.8)
    assert (p[y == 0] < spec["threshold"]).mean() >= 0.8


def test_joint_merge_groups_both_classes_and_keeps_a_class_under_k():
    """A site with 6 positives (under k = 10) still sends them, inside groups of >= 10 studies."""
    pos, neg = np.zeros(N_BINS, dtype=np.int64), np.zeros(N_BINS, dtype=np.int64)
    neg[[10, 11, 12, 20, 40]] = [5, 4, 3, 6, 8]
    pos[[12, 30, 41]] = [1, 2, 3]
    z = bin_centres_logit()
    hist, cal = joint_merge(pos, neg, pos * z, neg * z, 10)
    # groups over all studies, low to high: bins 10-12 (13 studies), then 20-40 (16) with the tail
    # bin 41 (3, under k) folded in
    groups = [[10, 11, 12], [20, 30, 40, 41]]
    assert hist["pos"][10] == 1 and hist["pos"][20] == 5 and np.count_nonzero(hist["pos"]) == 2
    assert hist["neg"][12] == 12 and hist["neg"][41] == 14 and np.count_nonzero(hist["neg"]) == 2
    for g in groups:
        n = (pos[g] + neg[g]).sum()
        centre = int(round((np.array(g) * (pos[g] + neg[g])).sum() / n))
        mean_z = float(((pos[g] + neg[g]) * z[g]).sum() / n)
        assert cal["pos"][centre] == pos[g].sum() and cal["neg"][centre] == neg[g].sum()
        assert cal["pos_logit_sum"][centre] == pytest.approx(pos[g].sum() * mean_z)
        assert cal["neg_logit_sum"][centre] == pytest.approx(neg[g].sum() * mean_z)
    assert (cal["pos"] + cal["neg"]).sum() == 32 and np.count_nonzero(cal["pos"] + cal["neg"]) == 2
    # the per-class merge drops the 6 positives entirely
    assert k_merge(pos, 10, "low")[0].sum() == 0


def test_k_merge_keeps_totals_and_places_counts_conservatively():
    counts = np.zeros(N_BINS, dtype=np.int64)
    counts[[10, 11, 12, 40, 41, 200]] = [3, 4, 5, 9, 2, 1]
    low, _ = k_merge(counts, 10, "low")
    high, _ = k_merge(counts, 10, "high")
    assert low.sum() == high.sum() == counts.sum()
    assert low[10] == 12 and low[40] == 12 and np.count_nonzero(low) == 2  # the last group (1) joins 40-41
    assert high[12] == 12 and high[200] == 12
    assert k_merge(np.bincount([5, 6], minlength=N_BINS), 10, "low")[0].sum() == 0  # class under k: nothing


def test_payload_is_fixed_size_counts_only_and_validation_split_only():
    rng = np.random.default_rng(0)
    small, large = (operating_point_payload(rng.random(n), rng.integers(0, 2, n), split="validation")
                    for n in (50, 5000))
    assert set(flatten_metrics(small)) == set(flatten_metrics(large))
    assert len(flatten_metrics(small)) == 6 * N_BINS + 3
    with pytest.raises(ValueError, match="validation split, not on 'test'"):
        operating_point_payload(rng.random(10), rng.integers(0, 2, 10), split="test")


def test_server_rejects_other_binnings_and_negative_counts():
    rng = np.random.default_rng(1)
    good = unflatten_metrics(flatten_metrics(operating_point_payload(rng.random(80), rng.integers(0, 2, 80),
                                                                     split="validation")))
    other = {**good, "meta": {**good["meta"], "bins": 100}}
    with pytest.raises(ValueError, match="site B: score histogram has 100 bins"):
        sum_histograms({"A": good, "B": other})
    bad = {**good, "histogram": {**good["histogram"], "pos": [-1.0] + good["histogram"]["pos"][1:]}}
    with pytest.raises(ValueError, match="site B: histogram.pos has a negative count"):
        sum_histograms({"A": good, "B": bad})
    with pytest.raises(ValueError, match="positives and negatives"):
        choose_operating_point({"pos": [0.0] * N_BINS, "neg": [1.0] * N_BINS})


def test_binning_is_documented_and_monotone():
    assert N_BINS == 322 and EDGES[0] == 0.0 and EDGES[-1] == 1.0 and np.all(np.diff(EDGES) > 0)
    assert score_bins(np.array([0.0, 1e-6, 0.5, 1 - 1e-6, 1.0])).tolist() == [0, 0, 161, N_BINS - 1, N_BINS - 1]
    with pytest.raises(ValueError, match="probabilities"):
        score_bins(np.array([1.2]))

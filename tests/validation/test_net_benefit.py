"""Decision-curve net benefit from the sites' counts: by hand on a tiny example, pooled = central."""

from __future__ import annotations

import numpy as np
import pytest

from ai4hi_sdk.validation.net_benefit import net_benefit_counts, net_benefit_curve, pool_counts, threshold_grid


def test_net_benefit_by_hand():
    # 10 studies, 4 positive; at t = 0.2: 3 TP (0.9, 0.6, 0.3), 2 FP (0.5, 0.25) -> 3/10 - 2/10 * 0.25
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.3, 0.1, 0.5, 0.25, 0.15, 0.1, 0.05, 0.0]
    counts = net_benefit_counts(y, p, [0.2, 0.5])
    assert counts == {"n": 10, "positives": 4, "thresholds": [0.2, 0.5], "tp": [3, 2], "fp": [2, 1]}
    curve = net_benefit_curve(counts)
    assert curve["model"] == pytest.approx([0.3 - 0.2 * 0.25, 0.2 - 0.1 * 1.0])
    assert curve["treat_all"] == pytest.approx([0.4 - 0.6 * 0.25, 0.4 - 0.6])
    assert curve["treat_none"] == [0.0, 0.0]


def test_pooled_counts_give_the_central_curve():
    rng = np.random.default_rng(0)
    grid = threshold_grid(0.05, 0.5, 0.05)
    assert grid[0] == 0.05 and grid[-1] == 0.5 and len(grid) == 10
    ys, ps, sites = [], [], []
    for n in (80, 150, 230):
        y = rng.integers(0, 2, n)
        p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * (2 * y - 1))))
        ys.append(y)
        ps.append(p)
        sites.append(net_benefit_counts(y, p, grid))
    pooled = net_benefit_curve(pool_counts(sites))
    central = net_benefit_curve(net_benefit_counts(np.concatenate(ys), np.concatenate(ps), grid))
    assert pooled == central
    with pytest.raises(ValueError, match="different net-benefit thresholds"):
        pool_counts([sites[0], net_benefit_counts(ys[1], ps[1], [0.1])])
    with pytest.raises(ValueError, match="threshold range"):
        threshold_grid(0.5, 1.0, 0.1)


def test_with_k_no_difference_of_two_sent_counts_describes_fewer_than_k_studies():
    rng = np.random.default_rng(4)
    grid = threshold_grid(0.05, 0.5, 0.05)
    y = rng.integers(0, 2, 90)
    p = 1 / (1 + np.exp(-(rng.normal(size=90) * 1.5 + 1.2 * (2 * y - 1))))
    exact, merged = net_benefit_counts(y, p, grid), net_benefit_counts(y, p, grid, min_count=10)
    assert merged["n"] == exact["n"] and merged["positives"] == exact["positives"]
    # the cells the counts reveal: below the first threshold, between neighbours, above the last
    called = [(exact["n"], exact["positives"])] + list(zip(
        [tp + fp for tp, fp in zip(merged["tp"], merged["fp"])], merged["tp"])) + [(0, 0)]
    cells = [a[0] - b[0] for a, b in zip(called, called[1:])]
    assert all(c == 0 or c >= 10 for c in cells), cells
    assert any(0 < a[0] - b[0] < 10 for a, b in zip(
        [(exact["n"],)] + [(tp + fp,) for tp, fp in zip(exact["tp"], exact["fp"])] + [(0,)],
        [(tp + fp,) for tp, fp in zip(exact["tp"], exact["fp"])] + [(0,)]))  # the exact counts did reveal one
    # a group counts as below every threshold inside it: never more called positive than exactly
    assert all(m <= e for m, e in zip(merged["tp"], exact["tp"])) and all(
        m <= e for m, e in zip(merged["fp"], exact["fp"]))
    # a threshold between groups keeps its exact counts
    same = [i for i, (m, e) in enumerate(zip(merged["tp"], exact["tp"])) if m == e and merged["fp"][i] == exact["fp"][i]]
    assert same

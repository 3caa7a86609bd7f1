import numpy as np
import pytest
from scipy.spatial.distance import cdist

from ai4hi_sdk.validation.segmentation import segmentation_report


def _hd95_by_hand(a, b, spacing):
    # tiny thin masks: every voxel is a surface voxel
    pa = np.argwhere(a) * np.asarray(spacing)
    pb = np.argwhere(b) * np.asarray(spacing)
    d = cdist(pa, pb)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_dice_and_hd95_against_hand_computation():
    gt = np.zeros((5, 5, 5), bool)
    gt[2, 2, 1:4] = True  # 3 voxels
    pred = np.zeros_like(gt)
    pred[2, 2, 1:3] = True  # 2 voxels, both inside gt
    r = segmentation_report([pred], [gt])
    assert r["dice"] == pytest.approx(2 * 2 / (2 + 3))
    # directed distances gt->pred = (0, 0, 1): 95th percentile 0.9; pred->gt = (0, 0)
    assert r["hd95"] == pytest.approx(0.9, abs=1e-5)
    assert r["n"] == r["n_dice"] == r["n_hd95"] == 1
    r2 = segmentation_report([pred], [gt], spacing=(1.0, 1.0, 2.5))
    assert r2["hd95"] == pytest.approx(2.25, abs=1e-5)
    assert r2["hd95"] == pytest.approx(_hd95_by_hand(pred, gt, (1.0, 1.0, 2.5)), abs=1e-5)


def test_mean_over_cases_and_empty_cases():
    gt = np.zeros((2, 6, 6, 6), bool)
    gt[:, 1:3, 1:3, 1:3] = True
    pred = gt.copy()
    pred[1, 1:3, 1:3, 1:4] = True  # 8 -> 12 voxels: dice 16/20
    empty_gt = np.zeros((6, 6, 6), bool)
    r = segmentation_report(list(pred) + [pred[0]], list(gt) + [empty_gt])
    assert r["n"] == 3 and r["n_dice"] == 2 and r["dice_undefined"] == 1
    assert r["dice"] == pytest.approx((1.0 + 0.8) / 2)
    assert r["n_hd95"] == 2 and r["hd95_undefined"] == 1
    assert r["hd95"] == pytest.approx((0.0 + _hd95_by_hand(pred[1], gt[1], (1, 1, 1))) / 2, abs=1e-5)
    assert r["hd95"] == pytest.approx(0.5, abs=1e-5)  # pred->gt distances 8x0, 4x1 -> p95 = 1


def test_shape_mismatch():
    with pytest.raises(ValueError):
        segmentation_report(np.zeros((1, 4, 4, 4)), np.zeros((1, 4, 4, 5)))


def test_hd95_per_case_in_that_case_s_own_spacing():
    """Cases from series of different slice spacing: each case's HD95 in its own mm (not voxels for
    all, not one case's spacing for all)."""
    gt = np.zeros((5, 5, 5), bool)
    gt[2, 2, 1:4] = True
    pred = np.zeros_like(gt)
    pred[2, 2, 1:3] = True
    fine, coarse = (1.0, 1.0, 0.5), (1.0, 1.0, 2.5)
    both = segmentation_report([pred, pred], [gt, gt], spacing=[fine, coarse])
    by_hand = [_hd95_by_hand(pred, gt, fine), _hd95_by_hand(pred, gt, coarse)]
    assert by_hand[0] != pytest.approx(by_hand[1])
    assert both["hd95"] == pytest.approx(np.mean(by_hand), abs=1e-5)
    assert both["spacing"] is None  # no one spacing to state
    same = segmentation_report([pred, pred], [gt, gt], spacing=[coarse, coarse])
    assert same["spacing"] == list(coarse) and same["hd95"] == pytest.approx(by_hand[1], abs=1e-5)
    with pytest.raises(ValueError, match="3 per-case spacings for 2 cases"):
        segmentation_report([pred, pred], [gt, gt], spacing=[fine, coarse, fine])

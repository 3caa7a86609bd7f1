import pytest
import torch

from ai4hi_sdk.jobs.aggregation import apply_delta, check_update, weighted_average, weighted_metric_means

REF = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


def test_weighted_average_matches_hand_computation():
    torch.manual_seed(0)
    deltas = [{k: torch.randn_like(v) for k, v in REF.items()} for _ in range(3)]
    weights = [10, 30, 60]
    avg = weighted_average(deltas, weights)
    for name in REF:
        expected = (10 * deltas[0][name] + 30 * deltas[1][name] + 60 * deltas[2][name]) / 100
        assert torch.allclose(avg[name], expected, atol=1e-6)
        assert avg[name].dtype == torch.float32


def test_order_of_sites_does_not_matter():
    torch.manual_seed(1)
    deltas = [{"w": torch.randn(1000) * 1e3} for _ in range(4)]
    weights = [3, 5, 7, 11]
    a = weighted_average(deltas, weights)["w"]
    b = weighted_average(deltas[::-1], weights[::-1])["w"]
    assert torch.allclose(a, b, rtol=1e-6, atol=0)  # float64 accumulation: below float32 rounding


def test_apply_delta():
    out = apply_delta({"w": torch.ones(2)}, {"w": torch.tensor([0.5, -1.0])})
    assert torch.equal(out["w"], torch.tensor([1.5, 0.0]))


@pytest.mark.parametrize(
    "delta,num,reason",
    [
        ({"w": torch.zeros(2, 3)}, 5, "missing"),
        ({**REF, "extra": torch.zeros(1)}, 5, "extra"),
        ({"w": torch.zeros(3, 2), "b": torch.zeros(3)}, 5, "shape"),
        ({"w": torch.zeros(2, 3, dtype=torch.int32), "b": torch.zeros(3)}, 5, "dtype"),
        ({"w": torch.full((2, 3), float("nan")), "b": torch.zeros(3)}, 5, "NaN"),
        ({"w": [[0.0] * 3] * 2, "b": torch.zeros(3)}, 5, "expected a tensor"),
        (REF, 0, "positive"),
        (REF, 2.5, "positive"),
        (REF, None, "positive"),
    ],
)
def test_check_update_rejects_malformed(delta, num, reason):
    problem = check_update(delta, REF, num)
    assert problem is not None and reason in problem


def test_check_update_accepts_well_formed():
    assert check_update({k: torch.ones_like(v) for k, v in REF.items()}, REF, 12) is None


def test_weighted_metric_means():
    per_site = {"a": {"val_auroc": 0.6, "val_samples": 10}, "b": {"val_auroc": 0.9, "val_samples": 30},
                "c": {"val_samples": 5}}
    means = weighted_metric_means(per_site, "val_samples")
    assert means["val_auroc"] == pytest.approx((0.6 * 10 + 0.9 * 30) / 40)
    assert means["val_samples"] == 45


def test_check_update_rejects_undeclared_or_non_numeric_metrics():
    delta = {k: torch.ones_like(v) for k, v in REF.items()}
    declared = frozenset({"train_loss", "val_auroc"})
    assert check_update(delta, REF, 3, {"train_loss": 0.5}, declared) is None
    assert "undeclared" in check_update(delta, REF, 3, {"patient_42_prob": 0.9}, declared)
    assert "expected a number" in check_update(delta, REF, 3, {"train_loss": "0.5"}, declared)

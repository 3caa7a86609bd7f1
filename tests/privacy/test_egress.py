import numpy as np
import torch

from ai4hi_sdk.privacy.egress import describe_payload


def test_torch_and_numpy_payloads_hash_alike():
    tensors = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(4)}
    as_numpy = {k: v.numpy() for k, v in tensors.items()}
    first = describe_payload(tensors, {"loss": 0.5})
    assert first == describe_payload(as_numpy, {"loss": 0.5})
    assert [t["name"] for t in first["tensors"]] == ["a", "b"]
    assert first["tensors"][1] == {"name": "b", "dtype": "float32", "shape": [2, 3]}
    assert first["num_elements"] == 10 and first["num_bytes"] == 40


def test_any_change_changes_the_digest():
    base = {"w": torch.zeros(3)}
    digest = describe_payload(base, {"loss": 1.0})["sha256"]
    assert describe_payload({"w": torch.tensor([0.0, 0.0, 1e-7])}, {"loss": 1.0})["sha256"] != digest
    assert describe_payload({"w": torch.zeros(3, dtype=torch.float64)}, {"loss": 1.0})["sha256"] != digest
    assert describe_payload({"w2": torch.zeros(3)}, {"loss": 1.0})["sha256"] != digest
    assert describe_payload(base, {"loss": 1.5})["sha256"] != digest
    assert describe_payload({"w": torch.zeros(1, 3)}, {"loss": 1.0})["sha256"] != digest
    assert describe_payload(base, {"loss": 1.0})["sha256"] == digest


def test_metrics_only_payload():
    desc = describe_payload({}, {"val_auroc": np.float64(0.75), "val_samples": 12})
    assert desc["tensors"] == [] and desc["metric_names"] == ["val_auroc", "val_samples"]

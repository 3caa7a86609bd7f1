"""Describe and fingerprint what a site sends (pure core, no NVFlare).

A payload is a mapping of tensor name -> array (torch tensor or numpy array) plus a mapping of
metric name -> number. :func:`describe_payload` gives names, dtypes, shapes and one SHA-256 over
a canonical encoding, so the site's egress log and the server's receipt log can be compared
record by record without storing the values themselves.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        return value.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(np.asarray(value))


def describe_payload(
    tensors: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Summarise a payload.

    Returns:
        ``{"tensors": [{"name", "dtype", "shape"}...] (sorted by name), "metric_names": [...],
        "num_elements": int, "num_bytes": int, "sha256": hex}``. The digest covers every tensor's
        name, dtype, shape and raw bytes, and the metric names and values (JSON-encoded).
    """
    digest = hashlib.sha256()
    entries, elements, nbytes = [], 0, 0
    tensors = tensors or {}
    for name in sorted(tensors):
        array = _as_numpy(tensors[name])
        header = json.dumps([name, array.dtype.str, list(array.shape)]).encode()
        digest.update(len(header).to_bytes(4, "little") + header)
        digest.update(array.tobytes())
        entries.append({"name": name, "dtype": str(array.dtype), "shape": list(array.shape)})
        elements += int(array.size)
        nbytes += int(array.nbytes)
    metric_items = sorted((metrics or {}).items())
    digest.update(json.dumps([[k, float(v)] for k, v in metric_items if _is_number(v)]).encode())
    return {
        "tensors": entries,
        "metric_names": [k for k, _ in metric_items],
        "num_elements": elements,
        "num_bytes": nbytes,
        "sha256": digest.hexdigest(),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def model_sha256(state: Mapping[str, Any]) -> str:
    """Content hash of a state dict (names, dtypes, shapes, bytes): a model's identity in lineage."""
    return describe_payload(dict(state))["sha256"]

"""FedAvg arithmetic and update checks (pure torch, no NVFlare).

``new_global = global + sum_k n_k * delta_k / sum_k n_k``, accumulated in float64 so the order in
which sites answer does not change the result beyond float32 rounding.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def check_update(delta: Mapping[str, object], reference: Mapping[str, torch.Tensor], num_samples: object,
                 metrics: Mapping[str, object] | None = None, declared: frozenset[str] | None = None) -> str | None:
    """Return why a site's update must be rejected, or ``None`` if it is well-formed.

    Checks: a positive integer sample count; metric names within ``declared`` (when given) and
    numeric; same tensor names as the global model, same shapes, floating dtype, finite values.
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
        return f"sample count must be a positive integer, got {num_samples!r}"
    if metrics and declared is not None:
        undeclared = sorted(set(metrics) - declared)
        if undeclared:
            return f"undeclared metrics {undeclared[:3]} (a site may only send its trainer's declared metrics)"
    for name, value in (metrics or {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"metric '{name}' is {type(value).__name__}, expected a number"
    missing, extra = set(reference) - set(delta), set(delta) - set(reference)
    if missing or extra:
        return f"tensor names differ from the global model (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})"
    for name, ref in reference.items():
        value = delta[name]
        if not isinstance(value, torch.Tensor):
            return f"'{name}' is {type(value).__name__}, expected a tensor"
        if tuple(value.shape) != tuple(ref.shape):
            return f"'{name}' has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
        if not value.is_floating_point():
            return f"'{name}' has dtype {value.dtype}, expected floating point"
        if not torch.isfinite(value).all():
            return f"'{name}' contains NaN or infinity"
    return None


def weighted_average(deltas: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of deltas (float64 accumulation, float32 result). ``weights`` must be > 0."""
    if not deltas or len(deltas) != len(weights):
        raise ValueError("need one weight per delta and at least one delta")
    total = float(sum(weights))
    out: dict[str, torch.Tensor] = {}
    for name in deltas[0]:
        acc = torch.zeros_like(deltas[0][name], dtype=torch.float64)
        for delta, weight in zip(deltas, weights):
            acc += delta[name].to(torch.float64) * (float(weight) / total)
        out[name] = acc.to(torch.float32)
    return out


def apply_delta(state: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state + delta`` per entry (float32)."""
    return {name: (state[name].float() + delta[name].float()) for name in state}


def weighted_metric_means(per_site: Mapping[str, Mapping[str, float]], weight_key: str) -> dict[str, float]:
    """Mean of each metric over sites, weighted by each site's ``weight_key`` value (e.g. ``val_samples``).

    Sites lacking a metric are left out of that metric's mean; the weight itself is summed.
    """
    sums: dict[str, float] = {}
    totals: dict[str, float] = {}
    for metrics in per_site.values():
        weight = float(metrics.get(weight_key, 0.0))
        if weight <= 0:
            continue
        for name, value in metrics.items():
            if name == weight_key:
                continue
            sums[name] = sums.get(name, 0.0) + weight * float(value)
            totals[name] = totals.get(name, 0.0) + weight
    means = {name: sums[name] / totals[name] for name in sums}
    means[weight_key] = float(sum(float(m.get(weight_key, 0.0)) for m in per_site.values()))
    return means

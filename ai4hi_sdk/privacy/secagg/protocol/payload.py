"""What a site's masked vector carries, and how the server reads the unmasked sum (pure numpy).

One uint32 vector per site and round (:class:`~..primitives.quantize.VectorLayout`)::

    delta          n_params  clip(delta) * (w / w_max), fixed point, stochastic rounding
    weight         1         w (training examples), exact integer
    metric_sums    m         clip(metric value), fixed point         (secure metrics only)
    metric_counts  m         1 if the site reported the metric, else 0 (secure metrics only)

so the server learns the weighted mean delta, the total weight and each metric's mean over the
sites that reported it -- never one site's delta, weight or metric. ``w_max``
(``max_samples_per_site``) is public job configuration; the weight is folded in as a multiplier
``w / w_max <= 1`` so no site's weight leaves in the clear.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..primitives.quantize import (QuantizationConfig, VectorLayout, check_counts_no_overflow, decode_count_sums,
                                   dequantize_sum, dequantize_weighted_mean, encode_counts, error_bound, quantize,
                                   weight_multiplier, weighted_error_bound)

#: metric values are clipped to +- this before quantisation (losses, AUROC, seconds, epsilon fit)
METRIC_CLIP = 1.0e4


def delta_quantization(clip: float, n_sites: int, max_weight: int) -> QuantizationConfig:
    """The fixed-point format of a job's delta coordinates for ``n_sites`` sites: clip ``clip`` and
    the largest power-of-two scale whose sum over ``n_sites`` cannot overflow. The one scale of
    secure aggregation: the codec quantises with it and the up-front check
    (:meth:`~.config.SecAggConfig.validate_for`) asks for it. Raises
    :class:`~..primitives.quantize.OverflowRiskError` when no scale fits, or when ``n_sites``
    weights of at most ``max_weight`` could overflow their coordinate."""
    check_counts_no_overflow(n_sites, max_weight)
    return QuantizationConfig(clip=clip, n_sites=n_sites)


@dataclass(frozen=True)
class DecodedSum:
    """The server's view after unmasking.

    Attributes:
        mean_delta: name -> float32 array, the sample-weighted mean of the survivors' clipped deltas.
        total_weight: sum of the survivors' training-example counts.
        metric_means: metric -> mean over the survivors that reported it (secure metrics only).
        metric_counts: metric -> how many survivors reported it.
        metric_sums: metric -> sum over the survivors (0 from a survivor that did not report it).
    """

    mean_delta: dict[str, np.ndarray]
    total_weight: int
    metric_means: dict[str, float]
    metric_counts: dict[str, int]
    metric_sums: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PayloadCodec:
    """Packs (delta, weight, metrics) into the vector a site masks; unpacks the server's sum.

    Args:
        tensors: ``(name, shape)`` of every exchanged float entry, in a fixed order.
        n_sites: the most vectors ever summed (the job's site count: the overflow guard uses it).
        clip: every delta element is clipped to ``[-clip, clip]``.
        max_weight: the largest training-set size a site may have (``w_max``).
        metric_names: metrics that travel masked (empty: none).
    """

    tensors: tuple[tuple[str, tuple[int, ...]], ...]
    n_sites: int
    clip: float
    max_weight: int
    metric_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # fail at construction, not at the first encode: a layout that could overflow is never built
        self.delta_config
        if self.metric_names:
            self.metric_config

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(shape, dtype=np.int64)) for _, shape in self.tensors)

    @cached_property
    def layout(self) -> VectorLayout:
        m = len(self.metric_names)
        return VectorLayout((("delta", sum(self.sizes)), ("weight", 1), ("metric_sums", m), ("metric_counts", m)))

    @cached_property
    def delta_config(self) -> QuantizationConfig:
        return delta_quantization(self.clip, self.n_sites, self.max_weight)

    @cached_property
    def metric_config(self) -> QuantizationConfig:
        return QuantizationConfig(clip=METRIC_CLIP, n_sites=self.n_sites)

    @property
    def length(self) -> int:
        """uint32 coordinates per vector."""
        return self.layout.total

    def encode(self, delta: Mapping[str, np.ndarray], weight: int, metrics: Mapping[str, float]) -> np.ndarray:
        """The site's vector (before masking). Raises ValueError for a missing/misshapen entry,
        non-finite values, or a weight outside ``[1, max_weight]`` (fail closed)."""
        vec = self.layout.allocate()
        flat = np.empty(sum(self.sizes), dtype=np.float32)
        off = 0
        for (name, shape), size in zip(self.tensors, self.sizes):
            if name not in delta:
                raise ValueError(f"delta lacks '{name}'")
            arr = np.asarray(delta[name], dtype=np.float32)
            if arr.shape != tuple(shape):
                raise ValueError(f"delta '{name}' has shape {arr.shape}, expected {tuple(shape)}")
            flat[off:off + size] = arr.reshape(-1)
            off += size
        extra = set(delta) - {n for n, _ in self.tensors}
        if extra:
            raise ValueError(f"delta has unexpected entries {sorted(extra)}")
        if not isinstance(weight, (int, np.integer)) or not 1 <= weight <= self.max_weight:
            raise ValueError(f"training examples {weight!r} outside [1, max_samples_per_site={self.max_weight}]")
        quantize(flat, self.delta_config, multiplier=weight_multiplier(float(weight), float(self.max_weight)),
                 out=self.layout.view(vec, "delta"))
        encode_counts([int(weight)], n_sites=self.n_sites, max_value=self.max_weight, out=self.layout.view(vec, "weight"))
        if self.metric_names:
            values = np.array([float(metrics.get(k, 0.0)) for k in self.metric_names], dtype=np.float32)
            present = [1 if k in metrics else 0 for k in self.metric_names]
            quantize(values, self.metric_config, out=self.layout.view(vec, "metric_sums"))
            encode_counts(present, n_sites=self.n_sites, max_value=1, out=self.layout.view(vec, "metric_counts"))
        return vec

    def decode(self, total: np.ndarray, n_summed: int) -> DecodedSum:
        """Read the unmasked sum of ``n_summed`` vectors."""
        parts = self.layout.split(np.ascontiguousarray(total, dtype=np.uint32))
        total_weight = int(decode_count_sums(parts["weight"])[0])
        if not 1 <= total_weight <= n_summed * self.max_weight:
            raise ValueError(f"unmasked total weight {total_weight} is impossible for {n_summed} sites "
                             "(wrong masks or a corrupted input)")
        flat = dequantize_weighted_mean(np.ascontiguousarray(parts["delta"]), self.delta_config, n_summed,
                                        total_weight=float(total_weight), max_weight=float(self.max_weight))
        mean_delta, off = {}, 0
        for (name, shape), size in zip(self.tensors, self.sizes):
            mean_delta[name] = flat[off:off + size].reshape(shape)
            off += size
        means: dict[str, float] = {}
        counts: dict[str, int] = {}
        metric_sums: dict[str, float] = {}
        if self.metric_names:
            sums = dequantize_sum(np.ascontiguousarray(parts["metric_sums"]), self.metric_config, n_summed)
            cnt = decode_count_sums(np.ascontiguousarray(parts["metric_counts"]))
            for name, s, c in zip(self.metric_names, sums, cnt):
                counts[name], metric_sums[name] = int(c), float(s)
                if c > 0:
                    means[name] = float(s) / int(c)
        return DecodedSum(mean_delta, total_weight, means, counts, metric_sums)

    def sum_problems(self, decoded: DecodedSum, n_summed: int) -> list[str]:
        """Why ``decoded`` cannot be the sum of ``n_summed`` in-range vectors (empty list: it can).

        In range means: every delta element in ``[-clip, clip]`` (so the weighted mean is too, up
        to :meth:`error_bound`), a weight in ``[1, max_weight]`` per site, every metric value in
        ``[-METRIC_CLIP, METRIC_CLIP]`` and a metric count of 0 or 1 per site. These are the only
        public bounds: a sum that passes may still hold one site's wrong but in-range values.
        """
        problems: list[str] = []
        w = decoded.total_weight
        if not n_summed <= w <= n_summed * self.max_weight:
            problems.append(f"total weight {w} outside [{n_summed}, {n_summed * self.max_weight}] for {n_summed} sites "
                            f"of at most max_samples_per_site={self.max_weight}")
            return problems  # the mean is scaled by a wrong weight: its range says nothing more
        limit = self.delta_config.clip_f32 + self.error_bound(n_summed, w)
        worst = max((float(np.max(np.abs(v))) for v in decoded.mean_delta.values() if v.size), default=0.0)
        if not worst <= limit:
            name = max(decoded.mean_delta, key=lambda k: float(np.max(np.abs(decoded.mean_delta[k])))
                       if decoded.mean_delta[k].size else 0.0)
            problems.append(f"mean delta reaches {worst:.6g} in '{name}', outside the clip range +-{self.clip:g} "
                            f"(+{self.error_bound(n_summed, w):.2g} quantisation)")
        slack = n_summed * error_bound(self.metric_config)
        for name in self.metric_names:
            count, total = decoded.metric_counts.get(name, 0), decoded.metric_sums.get(name, 0.0)
            if not 0 <= count <= n_summed:
                problems.append(f"metric '{name}' reported by {count} of {n_summed} sites")
            elif not abs(total) <= count * self.metric_config.clip_f32 + slack:
                problems.append(f"metric '{name}' sums to {total:.6g} over {count} sites, outside +-{METRIC_CLIP:g} each")
        return problems

    def error_bound(self, n_summed: int, total_weight: int) -> float:
        """Per-element bound on ``|mean_delta - weighted mean of the clipped deltas|``."""
        return weighted_error_bound(self.delta_config, n_summed, float(total_weight), float(self.max_weight))

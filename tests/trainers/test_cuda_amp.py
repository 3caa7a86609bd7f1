"""CUDA + AMP path of SiteTrainer. Runs wherever CUDA is present; elsewhere it is reported as
skipped with the reason (CI has no GPU, so CI runs the CPU path in the other tests)."""

import pytest
import torch

from tests.trainers.conftest import InMemoryTrainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: CUDA+AMP path NOT run"),
]


def test_cuda_amp_fit_matches_cpu_closely(spec):
    gpu = InMemoryTrainer(spec, site_dir=".", site_name="site-a")  # picks CUDA by default
    assert gpu.device.type == "cuda" and gpu.use_amp
    cpu = InMemoryTrainer(spec, site_dir=".", site_name="site-a", device="cpu")
    start = cpu.initial_state()
    g, c = gpu.fit(start, 0), cpu.fit(start, 0)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in g.delta.values())
    assert all(torch.isfinite(t).all() for t in g.delta.values())
    # fp16 autocast changes rounding, not the direction of learning
    flat_g = torch.cat([t.flatten() for t in g.delta.values()])
    flat_c = torch.cat([t.flatten() for t in c.delta.values()])
    cosine = torch.nn.functional.cosine_similarity(flat_g, flat_c, dim=0)
    assert cosine > 0.9, cosine
    assert set(g.metrics) == set(c.metrics)

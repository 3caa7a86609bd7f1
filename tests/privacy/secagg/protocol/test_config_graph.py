import pytest

from ai4hi_sdk.privacy.secagg.primitives.quantize import OverflowRiskError
from ai4hi_sdk.privacy.secagg.protocol import SecAggConfig, neighbour_graph


@pytest.mark.parametrize("n,k", [(5, 2), (6, 3), (8, 4), (7, 4), (10, 5)])
def test_graph_regular_symmetric_deterministic(n, k):
    sites = [f"s{i}" for i in range(n)]
    g = neighbour_graph(sites, k, b"seed")
    assert g == neighbour_graph(list(reversed(sites)), k, b"seed")
    for s, nb in g.items():
        assert len(nb) == k and s not in nb
        assert all(s in g[o] for o in nb)


def test_full_graph():
    g = neighbour_graph(["a", "b", "c"], None)
    assert g["a"] == {"b", "c"}
    assert neighbour_graph(["a", "b", "c"], 5) == g


def test_config_validation():
    c = SecAggConfig()  # default t = floor(2m/3) + 1 (Bonawitz et al., active server)
    assert [c.effective_threshold(n) for n in (3, 4, 5, 6, 8, 16)] == [3, 3, 4, 5, 6, 11]
    assert SecAggConfig(neighbours=4).effective_threshold(16) == 4  # m = k + 1 = 5
    assert SecAggConfig(threshold=2).effective_threshold(5) == 2  # asked for (each site checks its floor)
    with pytest.raises(ValueError, match="timeout"):
        SecAggConfig(key_timeout_s=float("inf"))
    with pytest.raises(ValueError, match="max_samples_per_site"):
        SecAggConfig(max_samples_per_site=0)
    with pytest.raises(ValueError, match="threshold"):
        SecAggConfig(threshold=9).validate_for(4)
    # the overflow guard is the codec's own (tests/privacy/secagg/test_settings.py): it refuses a site
    # count no scale can sum, and weights whose sum could wrap their coordinate
    with pytest.raises(OverflowRiskError, match="cannot be summed"):
        SecAggConfig(max_samples_per_site=1).validate_for(2**30 + 1)
    with pytest.raises(OverflowRiskError, match="max count"):
        SecAggConfig(max_samples_per_site=10_000_000).validate_for(430)
    SecAggConfig(max_samples_per_site=10_000_000).validate_for(429)

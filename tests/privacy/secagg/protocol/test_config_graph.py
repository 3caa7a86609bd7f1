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
    c = SecAggConfig()
    assert c.effective_threshold(3) == 2 and c.effective_threshold(5) == 3
    with pytest.raises(ValueError, match="timeout"):
        SecAggConfig(share_timeout_s=float("inf"))
    with pytest.raises(ValueError, match="threshold"):
        SecAggConfig(threshold=9).validate_for(4)
    with pytest.raises(OverflowRiskError):
        SecAggConfig(clip=1e6, scale=2.0**16).validate_for(100)

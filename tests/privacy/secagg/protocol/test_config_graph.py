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
        SecAggConfig(share_timeout_s=float("inf"))
    with pytest.raises(ValueError, match="threshold"):
        SecAggConfig(threshold=9).validate_for(4)
    with pytest.raises(OverflowRiskError):
        SecAggConfig(clip=1e6, scale=2.0**16).validate_for(100)

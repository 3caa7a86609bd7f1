"""A site's own demands on a round: minimum cohort and threshold floor."""
import pytest

from ai4hi_sdk.privacy.secagg.protocol import SitePolicy


def brute_force_safe_t(m, colluders):
    """Smallest t such that the server, with ``colluders`` sites on its side, can never hold t shares
    of both a site's self-mask secret and its mask key (each honest holder reveals one kind)."""
    honest = m - colluders
    return next(t for t in range(2, m + 1) if 2 * (t - colluders) > honest)


@pytest.mark.parametrize("m", range(3, 20))
def test_floors_match_the_collusion_they_tolerate(m):
    """two_thirds keeps both secrets apart for every c < m/3 colluders, majority for c = 0."""
    two_thirds, majority = SitePolicy().floor(m), SitePolicy(threshold_rule="majority").floor(m)
    assert two_thirds == (2 * m) // 3 + 1 and majority == m // 2 + 1
    assert all(two_thirds >= brute_force_safe_t(m, c) for c in range(0, (m + 2) // 3) if 3 * c < m)
    assert majority >= brute_force_safe_t(m, 0)
    assert SitePolicy(threshold_floor=m).floor(m) == m


def test_refusals_name_the_reason():
    p = SitePolicy(min_sites=4)
    assert "minimum cohort (min_secure_aggregation_sites) is 4" in p.refusal(3, 3, 3)
    assert "threshold t=2 is below this site's floor 3" in SitePolicy().refusal(4, 4, 2)
    assert SitePolicy().refusal(4, 4, 3) is None
    assert SitePolicy(threshold_rule="majority").refusal(3, 3, 2) is None
    for bad in [dict(min_sites=2), dict(threshold_floor=1), dict(threshold_rule="half"), dict(min_sites=True)]:
        with pytest.raises(ValueError):
            SitePolicy(**bad)

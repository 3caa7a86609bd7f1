"""What a site demands of a secure-aggregation round: minimum cohort and threshold floor.

These are the site's own rules (its policy file), never the job's: the job spec may *ask* for a
threshold ``t`` (:class:`~.config.SecAggConfig`), and a site refuses a round whose ``t`` is below
its floor, or whose verified cohort is smaller than its minimum.

Why ``t > 2m/3`` by default (``m`` = neighbourhood size, the site included; ``m = n`` for the full
graph). A site ``u`` hands one share of its self-mask secret ``b_u`` and one of its mask key ``s_u``
to each of its ``m - 1`` neighbours and never reveals both kinds for ``u`` (nor ``s_u`` itself). With
``c`` colluding neighbours, which hand the server both of their shares, the honest ``m - c`` each
reveal one kind, so the server holds ``t`` shares of both only if ``2 (t - c) <= m - c``, i.e.
``t <= (m + c) / 2``. ``t = floor(2m/3) + 1`` keeps both secrets apart for any ``c < m/3``
colluding sites (Bonawitz et al. 2017, active adversary); ``"majority"`` (``floor(m/2) + 1``)
only for ``c = 0`` -- an active server with no site on its side -- and is what a 3-site consortium
needs to survive one dropout (``t = 2``); with ``"two_thirds"`` a 3-site round needs all 3.
"""
from __future__ import annotations

from dataclasses import dataclass

#: threshold rules a site may choose: name -> minimum t for a neighbourhood of m sites
THRESHOLD_RULES = {
    "two_thirds": lambda m: (2 * m) // 3 + 1,
    "majority": lambda m: m // 2 + 1,
}
DEFAULT_MIN_SITES = 3


@dataclass(frozen=True)
class SitePolicy:
    """A site's demands on every secure-aggregation round.

    Args:
        min_sites: ``min_secure_aggregation_sites``: the fewest verified participants (this site
            included) the site takes part with (>= 3: the sum of two is the other's update).
        threshold_floor: the smallest ``t`` the site accepts, whatever the cohort (>= 2).
        threshold_rule: ``"two_thirds"`` (default, ``t >= floor(2m/3) + 1``) or ``"majority"``
            (``t >= floor(m/2) + 1``), see the module docstring.
    """

    min_sites: int = DEFAULT_MIN_SITES
    threshold_floor: int = 2
    threshold_rule: str = "two_thirds"

    def __post_init__(self) -> None:
        if isinstance(self.min_sites, bool) or not isinstance(self.min_sites, int) or self.min_sites < 3:
            raise ValueError(f"min_secure_aggregation_sites must be an int >= 3, got {self.min_sites!r}")
        if (isinstance(self.threshold_floor, bool) or not isinstance(self.threshold_floor, int)
                or self.threshold_floor < 2):
            raise ValueError(f"the threshold floor must be an int >= 2, got {self.threshold_floor!r}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, "
                             f"got {self.threshold_rule!r}")

    def floor(self, neighbourhood: int) -> int:
        """Smallest ``t`` this site accepts for a neighbourhood of ``neighbourhood`` sites (itself included)."""
        return max(self.threshold_floor, THRESHOLD_RULES[self.threshold_rule](neighbourhood))

    def refusal(self, n_participants: int, neighbourhood: int, threshold: int) -> str | None:
        """``None`` if a round with these verified figures is acceptable, else the reason."""
        if n_participants < self.min_sites:
            return (f"only {n_participants} verified participants; this site's minimum cohort "
                    f"(min_secure_aggregation_sites) is {self.min_sites}")
        floor = self.floor(neighbourhood)
        if threshold < floor:
            return (f"threshold t={threshold} is below this site's floor {floor} for a neighbourhood of "
                    f"{neighbourhood} (max(threshold_floor={self.threshold_floor}, {self.threshold_rule} "
                    f"rule)); ask for threshold >= {floor} in the job spec")
        return None

"""How the server sorts a site's returned result: refused, dropped, rejected or accepted (pure, no
NVFlare).

:func:`classify_result` is the one place that decides it, for every server workflow (training,
final validation, secure-aggregation protocol steps, validation and monitoring tasks). The order is
fixed:

1. **refused**: the site sent a refusal (``ai4hi_refused``, with its reason and possibly its
   privacy position); nothing of the task's work came with it;
2. **dropped**: the site dropped out (``ai4hi_dropped``, fault injection); it counts as absent;
3. **rejected**: the first of the caller's checks, in the caller's order, that names a problem
   (wrong round, duplicate, malformed payload, ...); the result is not used;
4. **accepted**: otherwise.

The caller passes the checks because what makes a result well-formed depends on the task; the
common ones are here (:func:`wrong_round`, :func:`duplicate`, :func:`metrics_problem`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Literal, Mapping

from ai4hi_sdk.jobs.run_record import PrivacyPosition, RecordError, Refusal, Rejection
from ai4hi_sdk.jobs.wire import DROPPED_KEY, REFUSAL_PRIVACY_KEY, REFUSED_KEY

#: a check of an answered result: the reason to reject it, or None
Check = Callable[[], str | None]
Outcome = Literal["refused", "dropped", "rejected", "accepted"]
#: a refusal reason longer than this is cut (it ends up in the lead's record and logs)
MAX_REASON = 1000


@dataclass(frozen=True)
class SiteResult:
    """A classified result.

    Attributes:
        site: the site that sent it (``"unknown"`` when the result does not say).
        outcome: refused, dropped, rejected or accepted.
        refusal: the refusal record (outcome refused).
        rejection: the rejection record (outcome rejected).
    """

    site: str
    outcome: Outcome
    refusal: Refusal | None = None
    rejection: Rejection | None = None

    @property
    def reason(self) -> str | None:
        record = self.refusal or self.rejection
        return record.reason if record is not None else None


def _given(**fields: Any) -> dict[str, Any]:
    """Only the fields that apply: a record keeps no null for what does not (round, task, step)."""
    return {k: v for k, v in fields.items() if v is not None}


def refusal_record(site: str, meta: Mapping[str, Any] | None, round_index: int | None = None,
                   task: str | None = None) -> Refusal:
    """The record of a site's refusal: round (training) or task (validation), site, reason and, if
    the site sent it, its privacy position (dataset id, epsilon spent and limit, delta)."""
    meta = meta or {}
    privacy = meta.get(REFUSAL_PRIVACY_KEY)
    position = None
    if isinstance(privacy, Mapping):
        position = PrivacyPosition.load({k: privacy.get(k) for k in ("dataset_id", "epsilon_spent", "epsilon_limit",
                                                                     "delta")}, f"{site}'s privacy position")
    return Refusal(**_given(round=round_index, task=task, site=site, reason=str(meta.get(REFUSED_KEY))[:MAX_REASON],
                            privacy=position))


def site_of(meta: Mapping[str, Any] | None) -> str:
    """The site a result came from (NVFlare puts it in the result's meta)."""
    return str((meta or {}).get("client_name", "unknown"))


def classify_result(meta: Mapping[str, Any] | None, checks: Iterable[Check] = (), *, round_index: int | None = None,
                    task: str | None = None, step: str | None = None) -> SiteResult:
    """Sort one returned result (see the module docstring for the order).

    Args:
        meta: the result's meta (``client_name``, and the refusal / drop markers).
        checks: the task's checks of an answered result, run in order until one names a problem
            (a check runs only when every earlier one passed).
        round_index, task, step: what the refusal / rejection record names (only those given).
    """
    site = site_of(meta)
    if (meta or {}).get(REFUSED_KEY):
        try:
            refusal = refusal_record(site, meta, round_index, task)
        except RecordError as err:  # a malformed privacy position: the refusal stands, its position is unknown
            refusal = Refusal(**_given(round=round_index, task=task, site=site,
                                       reason=f"{str((meta or {}).get(REFUSED_KEY))[:MAX_REASON]} "
                                              f"(privacy position unreadable: {err})"[:MAX_REASON]))
        return SiteResult(site, "refused", refusal=refusal)
    if (meta or {}).get(DROPPED_KEY):
        return SiteResult(site, "dropped")
    for check in checks:
        reason = check()
        if reason:
            return SiteResult(site, "rejected",
                              rejection=Rejection(**_given(round=round_index, task=task, step=step, site=site,
                                                           reason=reason)))
    return SiteResult(site, "accepted")


# ---------------------------------------------------------------------------------------------------
# common checks


def wrong_round(result_round: Any, expected: int, *, required: bool = False, wording: str = "current round is"
                ) -> Check:
    """Reject a result for another round (with ``required``, also one that names no round)."""
    def check() -> str | None:
        if result_round is None:
            return f"result is for round {result_round}, {wording} {expected}" if required else None
        try:
            same = int(result_round) == expected
        except (TypeError, ValueError):
            same = False
        return None if same else f"result is for round {result_round}, {wording} {expected}"
    return check


def duplicate(site: str, seen: Collection[str], what: str = "second result from the same site") -> Check:
    """Reject a second result from a site already answered."""
    return lambda: what if site in seen else None


def metrics_problem(metrics: Mapping[str, Any] | None) -> Check:
    """Reject metrics that are not numbers (a record holds numbers only)."""
    def check() -> str | None:
        for name, value in (metrics or {}).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return f"metric '{name}' is {type(value).__name__}, expected a number"
        return None
    return check

"""How the server reads a site's reply: refused, dropped or an answer (pure, no NVFlare)."""

from __future__ import annotations

from typing import Any

from ai4hi_sdk.jobs.wire import REFUSAL_PRIVACY_KEY, REFUSED_KEY


def refusal_record(site: str, meta: dict | None, round_index: int | None = None) -> dict[str, Any]:
    """The record of a site's refusal: round (training), site, reason and, if the site sent it, its
    privacy position (dataset id, epsilon spent and limit, delta)."""
    meta = meta or {}
    record: dict[str, Any] = {} if round_index is None else {"round": round_index}
    record.update(site=site, reason=str(meta.get(REFUSED_KEY))[:1000])
    privacy = meta.get(REFUSAL_PRIVACY_KEY)
    if isinstance(privacy, dict):
        record["privacy"] = {k: privacy.get(k) for k in ("dataset_id", "epsilon_spent", "epsilon_limit", "delta")}
    return record

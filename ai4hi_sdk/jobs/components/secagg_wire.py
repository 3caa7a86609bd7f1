"""How secure-aggregation steps travel in NVFlare tasks (shared by the controller and the sites).

Per job, before round 0:  ``ai4hi_secagg_keys`` (advertise) and ``ai4hi_secagg_shares``.
Per round ``r``:          ``train`` returns the masked vector **and** round ``r+1``'s advertisement;
                          ``ai4hi_secagg_unmask`` returns the unmask shares **and** round ``r+1``'s
                          sealed shares.
So a round costs one extra exchange (the unmask step, which dropout recovery needs) over plain
FedAvg, while keys stay fresh every round.

Server -> site data rides in the task's ``meta[SECAGG_META]`` (bytes, lists, dicts). Site -> server
data rides in the result's params as uint8/uint32 numpy arrays, so the egress and receipt logs
describe and hash every protocol message like any other payload.
"""
from __future__ import annotations

import os

import numpy as np

KEYS_TASK = "ai4hi_secagg_keys"
SHARES_TASK = "ai4hi_secagg_shares"
UNMASK_TASK = "ai4hi_secagg_unmask"
PROTOCOL_TASKS = (KEYS_TASK, SHARES_TASK, UNMASK_TASK)

#: task meta key of the protocol data sent to a site
SECAGG_META = "ai4hi_secagg"
#: result meta key of a (fault-injected) dropped site: it counts as absent
DROPPED_KEY = "ai4hi_dropped"

#: result params keys
ADVERT, SHARES, MASKED, UNMASK = "secagg_advertise", "secagg_shares", "secagg_masked", "secagg_unmask"

#: fault injection for tests and demos: "site:stage[@round][,site:stage[@round]...]"
DROP_ENV = "AI4HI_SECAGG_DROP"
DROP_STAGES = ("after-advertise", "after-shares", "after-input")


def to_wire(data: bytes) -> np.ndarray:
    """Protocol bytes as a uint8 array (an NVFlare params entry)."""
    return np.frombuffer(data, dtype=np.uint8).copy()


def from_wire(value: object) -> bytes:
    """Inverse of :func:`to_wire`; accepts numpy or torch uint8 arrays."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(f"protocol message must be a 1-D uint8 array, got {arr.dtype} {arr.shape}")
    return arr.tobytes()


def parse_drops(text: str | None) -> dict[str, tuple[str, int]]:
    """``"hospital-2:after-shares@1"`` -> ``{"hospital-2": ("after-shares", 1)}`` (round 0 by default)."""
    drops: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        site, _, rest = item.partition(":")
        stage, _, rnd = rest.partition("@")
        if not site or stage not in DROP_STAGES or (rnd and not rnd.isdigit()):
            raise ValueError(f"bad drop '{item}': expected SITE:STAGE[@ROUND] with STAGE one of {', '.join(DROP_STAGES)}")
        drops[site] = (stage, int(rnd or 0))
    return drops


def drop_for(site: str) -> tuple[str, int] | None:
    """This site's injected drop from the environment, if any."""
    return parse_drops(os.environ.get(DROP_ENV)).get(site)

"""Filters that log what crosses between a site and the server (NVFlare adapters).

* :class:`EgressLogFilter` runs at a site as the **last** task-result filter: it records what
  actually leaves the site (after every other filter) in the site's append-only, hash-chained
  egress log ``<site workspace>/ai4hi/egress_log.jsonl``.
* :class:`ReceiptLogFilter` runs at the server as a task-result (input) filter and records what
  arrived, per site, in ``<server run folder>/ai4hi_receipts.jsonl``.

Both store descriptions (names, dtypes, shapes, metric names, SHA-256), never values, so the two
logs can be compared record by record.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from ai4hi_sdk.audit.hash_chain import HashChainLog
from ai4hi_sdk.privacy.egress import describe_payload
from ai4hi_sdk.site_paths import site_workspace

EGRESS_LOG = Path("ai4hi") / "egress_log.jsonl"
RECEIPT_LOG = "ai4hi_receipts.jsonl"
#: shareable header: SHA-256 of the payload description the egress log already holds
LOGGED_HEADER = "ai4hi_egress_logged"


def describe_shareable(shareable: Shareable, fl_ctx: FLContext) -> dict[str, Any]:
    """Describe a task result: task, round, payload kind, tensors and metrics (no values)."""
    record: dict[str, Any] = {
        "time": time.time(),
        "job_id": fl_ctx.get_job_id(),
        "task": fl_ctx.get_prop(FLContextKey.TASK_NAME, "") or shareable.get_header(ReservedKey.TASK_NAME, ""),
        "round": shareable.get_header(AppConstants.CURRENT_ROUND),
        "return_code": shareable.get_return_code(),
    }
    try:
        dxo = from_shareable(shareable)
    except Exception as err:  # an error reply carries no DXO: log that, it is still egress
        record.update(payload_kind="none", detail=str(err)[:200])
        return record
    if dxo.data_kind == DataKind.METRICS:
        tensors, metrics = {}, dict(dxo.data or {})
    else:
        tensors, metrics = dict(dxo.data or {}), dict(dxo.meta.get("initial_metrics") or {})
    record["payload_kind"] = dxo.data_kind
    record["meta_keys"] = sorted(k for k in dxo.meta if k != "initial_metrics")
    record.update(describe_payload(tensors, metrics))
    record["metrics"] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return record


class EgressLogFilter(Filter):
    """Site-side: append a description of every outgoing task result to the egress log."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        record = describe_shareable(shareable, fl_ctx)
        # the site's privacy.json scope and the job may both install this filter: log a payload once,
        # unless a filter between the two changed it (then the later, outgoing form is logged too)
        if record.get("sha256") and shareable.get_header(LOGGED_HEADER) == record["sha256"]:
            return shareable
        record["site"] = fl_ctx.get_identity_name()
        root = site_workspace(record["site"], fl_ctx.get_engine().get_workspace().get_root_dir())
        HashChainLog(root / EGRESS_LOG).append(record)
        if record.get("sha256"):
            shareable.set_header(LOGGED_HEADER, record["sha256"])
        return shareable


class ReceiptLogFilter(Filter):
    """Server-side: append a description of every incoming task result to the receipt log."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        record = describe_shareable(shareable, fl_ctx)
        peer = fl_ctx.get_peer_context()
        record["site"] = peer.get_identity_name() if peer else None
        run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))
        HashChainLog(run_dir / RECEIPT_LOG).append(record)
        return shareable

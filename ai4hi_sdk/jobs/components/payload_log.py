"""What crosses between a site and the server, described (NVFlare adapters).

* :func:`describe_shareable` describes a task result (names, dtypes, shapes, metric names,
  SHA-256; never values). The site's egress guard (:mod:`ai4hi_sdk.site.egress_guard`) checks and
  logs with it what leaves a site.
* :class:`ReceiptLogFilter` runs at the server as a task-result (input) filter and records what
  arrived, per site, in ``<server run folder>/ai4hi_receipts.jsonl``.

The two logs can be compared record by record.
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
from ai4hi_sdk.jobs.wire import RECEIPT_LOG, ROUND_KEY
from ai4hi_sdk.privacy.egress import describe_payload


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
    if record["round"] is None and ROUND_KEY in dxo.meta:
        record["round"] = dxo.meta[ROUND_KEY]
    record.update(describe_payload(tensors, metrics))
    record["metrics"] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return record


class ReceiptLogFilter(Filter):
    """Server-side: append a description of every incoming task result to the receipt log."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        record = describe_shareable(shareable, fl_ctx)
        peer = fl_ctx.get_peer_context()
        record["site"] = peer.get_identity_name() if peer else None
        run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))
        HashChainLog(run_dir / RECEIPT_LOG).append(record)
        return shareable

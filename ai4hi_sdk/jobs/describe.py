"""Describe a task result as it crosses between a site and the server (NVFlare adapter, shared by
the site's egress guard and the server's receipt log): task, round, payload kind, tensor names,
dtypes and shapes, metric names and values of aggregate metrics, SHA-256 of the payload; never a
tensor's values."""

from __future__ import annotations

import time
from typing import Any

from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from ai4hi_sdk.jobs.wire import ROUND_KEY
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

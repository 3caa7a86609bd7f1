"""The server's receipt log (NVFlare adapter): :class:`ReceiptLogFilter` runs at the server as a
task-result (input) filter and records what arrived, per site, in ``<server run folder>/ai4hi_receipts.jsonl``,
described by :func:`ai4hi_sdk.jobs.describe.describe_shareable` exactly as the site's egress guard
describes what left, so the two logs can be compared record by record.
"""

from __future__ import annotations

from pathlib import Path

from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from ai4hi_sdk.audit.hash_chain import HashChainLog
from ai4hi_sdk.jobs.describe import describe_shareable
from ai4hi_sdk.jobs.wire import RECEIPT_LOG


class ReceiptLogFilter(Filter):
    """Server-side: append a description of every incoming task result to the receipt log."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        record = describe_shareable(shareable, fl_ctx)
        peer = fl_ctx.get_peer_context()
        record["site"] = peer.get_identity_name() if peer else None
        run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))
        HashChainLog(run_dir / RECEIPT_LOG).append(record)
        return shareable

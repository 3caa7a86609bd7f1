"""A finished job's server workspace (as ``download_job`` returns it) -> the ``result/`` layout
that ``ai4hi job simulate`` writes, so a lead's tooling reads both the same way::

    OUT/result/global_model.pt   final global model (state dict of float tensors)
    OUT/result/metrics.json      the server's round record, plus job_id, NVFlare status and
                                 per-site privacy as the sites reported it with their updates
    OUT/result/receipts.jsonl    what the server received (descriptions only)
    OUT/server/                  NVFlare's download of the job (server logs, job definition)

Sites' egress logs and privacy ledgers stay at the sites (that is the point); ``metrics.json``
says so, and the privacy summary here is what each site declared (``dp_epsilon`` with each update),
which a site admin can check against their own ledger (``ai4hi privacy report``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ai4hi_sdk.jobs.wire import METRICS_FILE, MODEL_FILE
from ai4hi_sdk.jobs.wire import RECEIPT_LOG

RECEIPTS = "receipts.jsonl"


def find_run_dir(download: Path) -> Path | None:
    """The server's run folder inside a job download (NVFlare puts it under ``workspace/``)."""
    for candidate in [download / "workspace", download, *sorted(download.rglob(METRICS_FILE))]:
        folder = candidate if candidate.is_dir() else candidate.parent
        if (folder / METRICS_FILE).is_file():
            return folder
    return None


def privacy_from_rounds(record: dict[str, Any]) -> dict[str, Any]:
    """Per-site privacy as reported to the server: the latest cumulative ``dp_epsilon`` each site
    declared (its dataset's total over all jobs, from its ledger), rounds with a DP update, refusals."""
    out: dict[str, Any] = {}
    refused: dict[str, int] = {}
    for refusal in record.get("refused", []):
        refused[refusal["site"]] = refused.get(refusal["site"], 0) + 1
    for site in record.get("sites", []):
        reported = [r["sites"][site] for r in record.get("rounds", []) if site in r.get("sites", {})
                    and "dp_epsilon" in r["sites"][site]]
        entry = {"source": "reported by the site with its updates; its ledger stays at the site",
                 "chain_ok": None, "ledger": None,
                 "datasets": {}}
        if reported or site in refused:
            last = reported[-1] if reported else {}
            entry["datasets"]["reported"] = {"epsilon_spent": float(last.get("dp_epsilon", 0.0)),
                                             "rounds": len(reported), "refused": refused.get(site, 0),
                                             "delta": last.get("dp_delta")}
        out[site] = entry
    return out


def build_result(download: Path, out: Path, job_id: str, job_meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``out/result/`` from a job ``download``; return the metrics record written."""
    result = out / "result"
    shutil.rmtree(result, ignore_errors=True)
    result.mkdir(parents=True)
    run_dir = find_run_dir(download)
    status = str(job_meta.get("status"))
    if run_dir is None:
        metrics: dict[str, Any] = {"status": "failed",
                                   "reason": f"the job ended ({status}) before the server wrote results"}
    else:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        if (run_dir / MODEL_FILE).is_file():
            shutil.copy2(run_dir / MODEL_FILE, result / MODEL_FILE)
            metrics["global_model"] = MODEL_FILE
        if (run_dir / RECEIPT_LOG).is_file():
            shutil.copy2(run_dir / RECEIPT_LOG, result / RECEIPTS)
            metrics["receipt_log"] = RECEIPTS
        if status != "FINISHED:COMPLETED" and metrics.get("status") in ("running", "completed"):
            metrics["status"] = "failed"
            metrics["reason"] = f"NVFlare ended the job with {status}"
        metrics["privacy"] = privacy_from_rounds(metrics)
    metrics["job_id"] = job_id
    metrics["nvflare_status"] = status
    metrics["egress_logs"] = {}  # kept at each site: <site kit>/ai4hi/egress_log.jsonl
    metrics["server_download"] = str(download)
    (result / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics

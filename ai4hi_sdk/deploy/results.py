"""A finished job's server workspace (as ``download_job`` returns it) -> the ``result/`` layout
that ``ai4hi job simulate`` writes, so a lead's tooling reads both the same way::

    OUT/result/global_model.pt   final global model (state dict of float tensors)
    OUT/result/metrics.json      the server's round record, plus job_id, NVFlare status and
                                 per-site privacy as the sites reported it with their updates
                                 (:class:`~ai4hi_sdk.jobs.run_record.TrainingRunRecord`)
    OUT/result/receipts.jsonl    what the server received (descriptions only)
    OUT/result/backbone/         a pretraining job's backbone, provenance record and card
    OUT/server/                  NVFlare's download of the job (server logs, job definition)

Sites' egress logs and privacy ledgers stay at the sites (that is the point); ``metrics.json``
says so, and the privacy summary here is what each site declared (``dp_epsilon`` with each update),
which a site admin can check against their own ledger (``ai4hi privacy report``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from ai4hi_sdk.jobs.run_record import DatasetPrivacy, SitePrivacy, TrainingRunRecord, as_training_record
from ai4hi_sdk.jobs.wire import BACKBONE_RESULT_DIR, METRICS_FILE, MODEL_FILE
from ai4hi_sdk.jobs.wire import RECEIPT_LOG

#: a job record, typed or as parsed from its JSON (validated on use)
Record = TrainingRunRecord | Mapping[str, Any]

RECEIPTS = "receipts.jsonl"


def find_run_dir(download: Path) -> Path | None:
    """The server's run folder inside a job download (NVFlare puts it under ``workspace/``)."""
    for candidate in [download / "workspace", download, *sorted(download.rglob(METRICS_FILE))]:
        folder = candidate if candidate.is_dir() else candidate.parent
        if (folder / METRICS_FILE).is_file():
            return folder
    return None


def trained_sites(record: Record) -> list[str]:
    """Sites whose update went into at least one completed round of the job's record."""
    return sorted({site for r in as_training_record(record).completed_rounds() for site in r.sites})


def no_site_trained(record: Record) -> bool:
    """True when no site's update was used (every site refused, was rejected or dropped)."""
    return not trained_sites(record)


def site_outcomes(record: Record) -> dict[str, dict[str, Any]]:
    """Per site of a job record: ``trained`` (rounds used), ``refused`` / ``rejected`` (the records,
    each with round and reason) and ``privacy``: what the site said about its budget, i.e. the
    ``privacy`` of its latest refusal (``dataset_id``, ``epsilon_spent``, ``epsilon_limit``,
    ``delta``) or else the cumulative ``dp_epsilon`` / ``dp_delta`` it reported with its last update;
    ``epsilon_remaining`` where the limit is known. Absent fields are None: nothing is made up."""
    record = as_training_record(record)
    sites = set(record.sites) | {r.site for r in record.refused} | {r.site for r in record.rejected}
    out: dict[str, dict[str, Any]] = {}
    for site in sorted(sites):
        rounds = [r for r in record.rounds if site in r.sites]
        reports = [r for r in rounds if "dp_epsilon" in r.sites[site]]
        refused = [r for r in record.refused if r.site == site]
        privacy: dict[str, Any] = {"dataset_id": None, "epsilon_spent": None, "epsilon_limit": None, "delta": None,
                                   "source": None}
        stated = [r.privacy for r in refused if r.privacy is not None]
        last_refusal_round = max((r.round if r.round is not None else -1 for r in refused), default=-1)
        last_report_round = max((r.round for r in reports), default=-1)
        if stated and last_refusal_round >= last_report_round:
            privacy.update(stated[-1].model_dump(include={"dataset_id", "epsilon_spent", "epsilon_limit", "delta"}))
            privacy["source"] = "stated by the site with its refusal"
        elif reports:
            last = reports[-1].sites[site]
            privacy.update(epsilon_spent=last.get("dp_epsilon"), delta=last.get("dp_delta"),
                           source="reported by the site with its last update")
            if stated:
                privacy.update(epsilon_limit=stated[-1].epsilon_limit, dataset_id=stated[-1].dataset_id)
        spent, limit = privacy["epsilon_spent"], privacy["epsilon_limit"]
        privacy["epsilon_remaining"] = max(limit - spent, 0.0) if spent is not None and limit is not None else None
        out[site] = {"trained": sum(1 for r in rounds if r.status == "completed"),
                     "refused": refused, "rejected": [r for r in record.rejected if r.site == site],
                     "privacy": privacy}
    return out


def describe_site_privacy(privacy: dict[str, Any]) -> str:
    """One phrase for a site's privacy state, e.g. ``epsilon 8 spent of 10 (2 remaining, delta 1e-05)``."""
    spent, limit = privacy.get("epsilon_spent"), privacy.get("epsilon_limit")
    if spent is None:
        return "epsilon spent not reported by the site (its ledger: 'ai4hi privacy report --site KIT')"
    text = f"epsilon {spent:.3g} spent"
    if limit is not None:
        text += f" of {limit:.3g} ({privacy['epsilon_remaining']:.3g} remaining"
    else:
        text += " (limit not reported"
    text += f", delta {privacy['delta']:g})" if privacy.get("delta") is not None else ", delta not reported)"
    if privacy.get("dataset_id"):
        text += f" on dataset {privacy['dataset_id']}"
    return text


def privacy_from_rounds(record: Record) -> dict[str, SitePrivacy]:
    """Per-site privacy as reported to the server (:func:`site_outcomes`): epsilon spent on the
    site's dataset (its total over all jobs, from its ledger), rounds with a DP update, refusals.
    A value the site did not report is None, never 0."""
    record = as_training_record(record)
    out: dict[str, SitePrivacy] = {}
    for site, outcome in site_outcomes(record).items():
        privacy = outcome["privacy"]
        datasets: dict[str, DatasetPrivacy] = {}
        rounds = sum(1 for r in record.rounds if "dp_epsilon" in r.sites.get(site, {}))
        if rounds or outcome["refused"]:
            datasets[privacy.get("dataset_id") or "reported"] = DatasetPrivacy(
                epsilon_spent=privacy["epsilon_spent"], epsilon_limit=privacy["epsilon_limit"],
                epsilon_remaining=privacy["epsilon_remaining"], delta=privacy["delta"], rounds=rounds,
                refused=len(outcome["refused"]))
        out[site] = SitePrivacy(source="reported by the site with its updates or refusals; its ledger stays at the site",
                                chain_ok=None, ledger=None, datasets=datasets)
    return out


def build_result(download: Path, out: Path, job_id: str, job_meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``out/result/`` from a job ``download``; return the metrics record written."""
    result = out / "result"
    shutil.rmtree(result, ignore_errors=True)
    result.mkdir(parents=True)
    run_dir = find_run_dir(download)
    status = str(job_meta.get("status"))
    if run_dir is None:
        record = TrainingRunRecord(status="failed", reason=f"the job ended ({status}) before the server wrote results")
    else:
        record = TrainingRunRecord.read(run_dir / METRICS_FILE)
        if (run_dir / MODEL_FILE).is_file():
            shutil.copy2(run_dir / MODEL_FILE, result / MODEL_FILE)
            record.global_model = MODEL_FILE
        if (run_dir / RECEIPT_LOG).is_file():
            shutil.copy2(run_dir / RECEIPT_LOG, result / RECEIPTS)
            record.receipt_log = RECEIPTS
        if (run_dir / BACKBONE_RESULT_DIR).is_dir():
            shutil.copytree(run_dir / BACKBONE_RESULT_DIR, result / BACKBONE_RESULT_DIR)
        if status != "FINISHED:COMPLETED" and record.status in ("running", "completed"):
            record.status = "failed"
            record.reason = f"NVFlare ended the job with {status}"
        record.privacy = privacy_from_rounds(record)
    record.job_id = job_id
    record.nvflare_status = status
    record.egress_logs = {}  # kept at each site: <site kit>/ai4hi/egress_log.jsonl
    record.server_download = str(download)
    (result / "metrics.json").write_text(record.to_json())
    return record.to_json_dict()


def latest_round_metrics(record: Record) -> tuple[int, dict[str, float]] | None:
    """``(round, metrics)`` of the latest completed round of a job record: the secure-aggregation
    consortium means if the round has them, else the weighted mean of the sites' validation of the
    global model that round produced (or received); None before a round completed."""
    completed = as_training_record(record).completed_rounds()
    if not completed:
        return None
    last = completed[-1]
    metrics = dict(last.consortium_metrics or {})
    if not metrics and last.global_validation is not None:
        metrics = dict(last.global_validation.weighted_mean)
    return last.round, {k: float(v) for k, v in metrics.items()}

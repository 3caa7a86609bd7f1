"""Run a validation / monitoring job in the NVFlare simulator and collect its record.

Workspace layout::

    WS/job/<name>/                 the exported NVFlare job
    WS/simulate/, WS/simulate.log  the simulator's workspace and output
    WS/result/validation.json      the server's record: per-site aggregate reports, drift statistics,
                                   refusals and rejections, model hashes
                                   (:class:`~ai4hi_sdk.jobs.run_record.ValidationRecord`;
                                   reference: docs/reference/validation-json.md)
    WS/result/egress/<site>.jsonl  copy of each site's hash-chained egress log
    WS/result/receipts.jsonl       what the server received (descriptions only)

Site state (policy, egress log, drift references) lives in ``sites_root/<site>/ai4hi/`` — by
default ``WS/sites`` — so a continuous loop shares it between its training, validation and
monitoring jobs, as a real site does.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.jobs.builder import export_validation_job
from ai4hi_sdk.jobs.run_record import ValidationRecord
from ai4hi_sdk.jobs.simulate import (DEFAULT_SITE_POLICY, SIM_JOB_ID, discover_sites, install_site_backbones,
                                     simulate_job_dir)
from ai4hi_sdk.jobs.wire import RECEIPT_LOG
from ai4hi_sdk.jobs.wire import VALIDATION_RESULT_FILE as RESULT_FILE
from ai4hi_sdk.site.egress_guard import EGRESS_LOG
from ai4hi_sdk.config.site_policy import SITE_POLICY

RESULT_JSON = "validation.json"


@dataclass
class ValidationRun:
    """Where a validation job's record is and how it ended.

    Attributes:
        record: the record as written to ``validation.json`` (JSON form); :attr:`run_record` reads it.
    """

    result_dir: Path
    record: dict
    return_code: int
    seconds: float

    @property
    def run_record(self) -> ValidationRecord:
        """The record, typed (raises RecordError naming the field if it does not match)."""
        return ValidationRecord.load(self.record, str(self.result_dir / RESULT_JSON))

    @property
    def ok(self) -> bool:
        return self.return_code == 0 and self.run_record.status == "completed"


def run_validation(spec: JobSpec, config: ValidationSpec, data_root: str | Path, workspace: str | Path, *,
                   champion: Mapping[str, torch.Tensor] | str | Path,
                   candidate: Mapping[str, torch.Tensor] | str | Path | None = None,
                   tasks: Sequence[str] = ("validate",), sites: list[str] | None = None,
                   sites_root: str | Path | None = None, timeout_s: float = 600,
                   champion_operating_point: Mapping | None = None,
                   champion_calibration: Mapping | None = None,
                   site_candidates: Mapping[str, Mapping[str, torch.Tensor] | str | Path] | None = None
                   ) -> ValidationRun:
    """Export and simulate a validation and/or monitoring job over the site folders of ``data_root``.

    A simulated site without a privacy policy gets the SDK default (which allows ``validate`` and
    ``monitor``); a site's own policy is kept and enforced. With ``config.operating_point`` the
    candidate's (and, unless ``champion_operating_point`` gives the champion's model version record,
    the champion's) operating point is chosen on the validation splits first (record:
    ``operating_points``). ``site_candidates`` (``{site: model}``) validates a different candidate at
    each site against the same champion (leave-one-site-out).
    """
    data_root, workspace = Path(data_root).resolve(), Path(workspace).resolve()
    sites_root = Path(sites_root).resolve() if sites_root is not None else workspace / "sites"
    chosen = sites or discover_sites(data_root)
    for stale in ("job", "simulate", "result"):
        shutil.rmtree(workspace / stale, ignore_errors=True)
    workspace.mkdir(parents=True, exist_ok=True)
    for site in chosen:
        policy = sites_root / site / SITE_POLICY
        if not policy.exists():
            policy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DEFAULT_SITE_POLICY, policy)
    install_site_backbones(spec, sites_root, chosen)  # a job on a backbone: sites that lack it get it
    job_dir = export_validation_job(spec, config, workspace / "job", champion=champion, candidate=candidate,
                                    tasks=tasks, data_root=data_root, champion_operating_point=champion_operating_point,
                                    champion_calibration=champion_calibration, site_candidates=site_candidates)
    started = time.monotonic()
    code = simulate_job_dir(job_dir, workspace, chosen, timeout_s=timeout_s, sites_root=sites_root)
    seconds = time.monotonic() - started
    result = workspace / "result"
    result.mkdir(parents=True, exist_ok=True)
    run_dir = workspace / "simulate" / "server" / SIM_JOB_ID
    src = run_dir / RESULT_FILE
    record = ValidationRecord.read(src) if src.exists() else ValidationRecord(
        status="failed", reason=f"the simulator ended (exit code {code}) before the job wrote results")
    if code != 0 and record.status in ("running", "completed"):
        record.status = "failed"
        record.reason = f"simulator exit code {code}" + (" (timed out)" if code == 124 else "")
    if (run_dir / RECEIPT_LOG).exists():
        shutil.copy2(run_dir / RECEIPT_LOG, result / "receipts.jsonl")
        record.receipt_log = "receipts.jsonl"
    record.egress_logs = {}
    for site in chosen:
        log = sites_root / site / EGRESS_LOG
        if log.exists():
            (result / "egress").mkdir(exist_ok=True)
            shutil.copy2(log, result / "egress" / f"{site}.jsonl")
            record.egress_logs[site] = {"copy": f"egress/{site}.jsonl", "site_log": str(log)}
    record.seconds = round(seconds, 3)
    (result / RESULT_JSON).write_text(record.to_json())
    return ValidationRun(result, record.to_json_dict(), code, seconds)

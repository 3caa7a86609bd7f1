"""Server-side workflow of an ai4hi validation / monitoring job (NVFlare ``ModelController``).

* ``validate``: send the candidate's and the champion's weights to every site in one
  ``ai4hi_cross_validate`` task and collect each site's aggregate report;
* ``monitor``: send the deployed model (the champion) in one ``ai4hi_monitor`` task and collect
  each site's drift statistics.

Every site result is checked before it is kept: no tensors, only finite numbers under the
validation schema's names, a bounded number of entries
(:func:`~ai4hi_sdk.validation.site_report.check_aggregate_payload`); a refusal is recorded with the
site's reason. The record is written to the run folder as ``ai4hi_validation.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from ai4hi_sdk.jobs.site_results import refusal_record
from ai4hi_sdk.jobs.wire import APP_DATA_DIR, CROSS_VALIDATE_TASK, MONITOR_TASK, REFUSED_KEY, VALIDATION_RESULT_FILE, join_models
from ai4hi_sdk.privacy.egress import model_sha256
from ai4hi_sdk.validation.site_report import DRIFT_ROOTS, REPORT_ROOTS, check_aggregate_payload, unflatten_metrics

RESULT_FILE = VALIDATION_RESULT_FILE
CANDIDATE_FILE, CHAMPION_FILE = "candidate_model.pt", "champion_model.pt"


class Ai4hiValidationController(ModelController):
    """Cross-site validation of a candidate against the champion, and/or drift monitoring.

    Args:
        candidate_file: candidate state dict file in the app's ``ai4hi_data/`` folder ("" for monitor-only jobs).
        champion_file: champion (deployed model) state dict file in the app's ``ai4hi_data/`` folder.
        tasks: ``["validate"]``, ``["monitor"]`` or both (validate first).
        timeout: seconds to wait for site results of one task.
    """

    def __init__(self, candidate_file: str, champion_file: str, tasks: list[str], timeout: int = 600):
        super().__init__(persistor_id="")
        self.candidate_file = candidate_file
        self.champion_file = champion_file
        self.tasks = list(tasks)
        self.timeout = timeout
        self._record: dict[str, Any] = {}

    def _load(self, name: str) -> dict[str, torch.Tensor]:
        folder = os.path.join(self.engine.get_workspace().get_app_dir(self.fl_ctx.get_job_id()), APP_DATA_DIR)
        state = torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
        return {k: torch.as_tensor(v).float() for k, v in state.items()}

    def _write(self) -> None:
        path = Path(self.get_run_dir()) / RESULT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._record, indent=2, sort_keys=True))
        os.replace(tmp, path)

    def run(self) -> None:
        from nvflare.app_opt.pt.decomposers import TensorDecomposer
        from nvflare.fuel.utils import fobs

        fobs.register(TensorDecomposer)
        sites = sorted(self.sample_clients(None))
        champion = self._load(self.champion_file)
        self._record = {"sites": sites, "tasks": self.tasks, "status": "running", "rejected": [], "refused": [],
                        "champion_sha256": model_sha256(champion)}
        if "validate" in self.tasks:
            candidate = self._load(self.candidate_file)
            self._record["candidate_sha256"] = model_sha256(candidate)
            started = time.time()
            data = FLModel(params=join_models({"candidate": candidate, "champion": champion}),
                           params_type=ParamsType.FULL)
            self._record["validation"] = self._collect(CROSS_VALIDATE_TASK, data, sites, REPORT_ROOTS)
            self._record["validation_seconds"] = round(time.time() - started, 3)
            self._write()
        if "monitor" in self.tasks:
            started = time.time()
            data = FLModel(params=join_models({"model": champion}), params_type=ParamsType.FULL)
            collected = self._collect(MONITOR_TASK, data, sites, DRIFT_ROOTS)
            self._record["drift"] = {site: r["drift"] for site, r in collected.items()}
            self._record["monitor_seconds"] = round(time.time() - started, 3)
        self._record["status"] = "completed"
        self._write()
        self.info(f"ai4hi validation job completed: {self.tasks} at {sites}")

    def _collect(self, task: str, data: FLModel, sites: list[str], roots: tuple[str, ...]) -> dict[str, dict]:
        results = self.send_model_and_wait(task_name=task, data=data, targets=sites, min_responses=len(sites),
                                           timeout=self.timeout)
        kept: dict[str, dict] = {}
        for result in results:
            meta = result.meta or {}
            site = meta.get("client_name", "unknown")
            if meta.get(REFUSED_KEY):
                self.warning(f"{site} refused {task}: {meta[REFUSED_KEY]}")
                self._record["refused"].append({"task": task, **refusal_record(site, meta)})
                continue
            reason = None
            if result.params:
                reason = f"{len(result.params)} tensors in a metrics-only task"
            else:
                reason = check_aggregate_payload(result.metrics or {}, roots)
            if reason is None and site in kept:
                reason = "second result from the same site"
            if reason:
                self.warning(f"rejected {task} result from {site}: {reason}")
                self._record["rejected"].append({"task": task, "site": site, "reason": reason})
                continue
            kept[site] = unflatten_metrics(result.metrics or {})
        missing = sorted(set(sites) - set(kept) - {r["site"] for r in self._record["refused"] if r["task"] == task}
                         - {r["site"] for r in self._record["rejected"] if r["task"] == task})
        for site in missing:
            self._record["rejected"].append({"task": task, "site": site, "reason": "no result before the timeout"})
        return kept

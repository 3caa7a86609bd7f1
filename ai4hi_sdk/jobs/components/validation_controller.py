"""Server-side workflow of an ai4hi validation / monitoring job (NVFlare ``ModelController``).

* ``validate``: with an operating-point setting, first send the models whose operating point is
  not yet known (the candidate; the champion unless its model version's record is given) in one
  ``ai4hi_operating_point`` task: each site returns k-merged per-class score histograms of its
  **validation** split; the server sums them, chooses each model's threshold for the policy's
  target (:func:`~ai4hi_sdk.validation.operating_point.operating_point_from_payloads`) and fits its
  recalibration (:func:`~ai4hi_sdk.validation.calibration.recalibrate_from_payloads`). Then send the
  candidate's and the champion's weights, with both operating points in the task meta, to every
  site in one ``ai4hi_cross_validate`` task and collect each site's aggregate report of its fixed
  **test** split at those operating points;
* ``validate`` with one candidate per site (``site_candidates``, e.g. leave-one-site-out models):
  each site gets its own candidate against the common champion, in a task sent to it alone (no
  operating point: a comparison of scores);
* ``monitor``: send the deployed model (the champion) in one ``ai4hi_monitor`` task and collect
  each site's drift statistics.

Every site result is checked before it is kept: no tensors, only finite numbers under the
validation schema's names, a bounded number of entries
(:func:`~ai4hi_sdk.validation.site_report.check_aggregate_payload`); a refusal is recorded with the
site's reason; the sorting into refused, dropped, rejected and accepted is
:func:`~ai4hi_sdk.jobs.site_results.classify_result`'s. The record
(:class:`~ai4hi_sdk.jobs.run_record.ValidationRecord`) is written to the run folder as
``ai4hi_validation.json``; its
``operating_points`` hold, per model, the chosen operating point, the recalibration and where they
came from. If the candidate's operating point cannot be chosen (no site sent histograms, one class
only), the job fails without validating: a model without an operating point is never judged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from ai4hi_sdk.jobs.run_record import OperatingPointChoice, Rejection, ValidationRecord
from ai4hi_sdk.jobs.site_results import classify_result, duplicate, site_of
from ai4hi_sdk.jobs.wire import (APP_DATA_DIR, CROSS_VALIDATE_TASK, MONITOR_TASK, OPERATING_POINT_TASK,
                                 OPERATING_POINTS_META, VALIDATION_RESULT_FILE, join_models)
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
        operating_point: ``{"target", "value", "recalibration"}`` (the update policy's); None: both
            models are validated at the sites' fixed threshold.
        champion_operating_point: the champion's model version record (``threshold`` ...), if it has
            one: used as it is (a model version keeps its operating point); else chosen here too.
        champion_calibration: the champion's recalibration record (``a``, ``b`` ...), if it has one.
        site_candidates: ``{site: file}``: validate each site's own candidate (in ``ai4hi_data/``)
            instead of ``candidate_file`` (a site without one is not asked).
    """

    def __init__(self, candidate_file: str, champion_file: str, tasks: list[str], timeout: int = 600,
                 operating_point: dict | None = None, champion_operating_point: dict | None = None,
                 champion_calibration: dict | None = None, site_candidates: dict | None = None):
        super().__init__(persistor_id="")
        self.candidate_file = candidate_file
        self.champion_file = champion_file
        self.tasks = list(tasks)
        self.timeout = timeout
        self.operating_point = operating_point
        self.champion_operating_point = champion_operating_point
        self.champion_calibration = champion_calibration
        self.site_candidates = site_candidates
        self._record = ValidationRecord(status="running")

    def _load(self, name: str) -> dict[str, torch.Tensor]:
        folder = os.path.join(self.engine.get_workspace().get_app_dir(self.fl_ctx.get_job_id()), APP_DATA_DIR)
        state = torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
        return {k: torch.as_tensor(v).float() for k, v in state.items()}

    def _write(self) -> None:
        self._record.write(Path(self.get_run_dir()) / RESULT_FILE)

    def run(self) -> None:
        from nvflare.app_opt.pt.decomposers import TensorDecomposer
        from nvflare.fuel.utils import fobs

        fobs.register(TensorDecomposer)
        sites = sorted(self.sample_clients(None))
        champion = self._load(self.champion_file)
        record = self._record = ValidationRecord(sites=sites, tasks=self.tasks, status="running", rejected=[],
                                                 refused=[], champion_sha256=model_sha256(champion))
        if "validate" in self.tasks and self.site_candidates:
            started = time.time()
            reports: dict[str, dict] = {}
            record.validation, record.candidate_sha256_by_site = reports, {}
            for site in sites:
                if site not in self.site_candidates:
                    continue
                candidate = self._load(self.site_candidates[site])
                record.candidate_sha256_by_site[site] = model_sha256(candidate)
                data = FLModel(params=join_models({"candidate": candidate, "champion": champion}),
                               params_type=ParamsType.FULL)
                reports.update(self._collect(CROSS_VALIDATE_TASK, data, [site], REPORT_ROOTS))
            record.validation_seconds = round(time.time() - started, 3)
            self._write()
        elif "validate" in self.tasks:
            candidate = self._load(self.candidate_file)
            record.candidate_sha256 = model_sha256(candidate)
            started = time.time()
            meta: dict[str, Any] = {}
            if self.operating_point:
                chosen = self._operating_points({"candidate": candidate, "champion": champion}, sites)
                if "candidate" not in chosen:
                    record.status = "failed"
                    record.reason = ("no operating point for the candidate: "
                                     + ((record.operating_points or {})["candidate"].error or "?"))
                    self._write()
                    self.error(f"ai4hi validation job failed: {record.reason}")
                    return
                meta[OPERATING_POINTS_META] = chosen
                record.operating_point_seconds = round(time.time() - started, 3)
                self._write()
            data = FLModel(params=join_models({"candidate": candidate, "champion": champion}),
                           params_type=ParamsType.FULL, meta=meta)
            record.validation = self._collect(CROSS_VALIDATE_TASK, data, sites, REPORT_ROOTS)
            record.validation_seconds = round(time.time() - started, 3)
            self._write()
        if "monitor" in self.tasks:
            started = time.time()
            data = FLModel(params=join_models({"model": champion}), params_type=ParamsType.FULL)
            collected = self._collect(MONITOR_TASK, data, sites, DRIFT_ROOTS)
            record.drift = {site: r["drift"] for site, r in collected.items()}
            record.monitor_seconds = round(time.time() - started, 3)
        record.status = "completed"
        self._write()
        self.info(f"ai4hi validation job completed: {self.tasks} at {sites}")

    def _operating_points(self, models: dict[str, dict[str, torch.Tensor]], sites: list[str]) -> dict[str, dict]:
        """Each model's operating point and recalibration: the champion's record when given, else
        chosen from the sites' validation histograms. Fills ``record["operating_points"]``; returns
        what the cross-validation task carries, ``{role: {"threshold", "calibration": {"a", "b"} | None}}``
        (a role is missing when its operating point could not be chosen)."""
        from ai4hi_sdk.validation.calibration import recalibrate_from_payloads
        from ai4hi_sdk.validation.operating_point import operating_point_from_payloads, sum_histograms

        settings = self.operating_point or {}
        target, value, method = settings.get("target", "sensitivity"), settings.get("value"), \
            settings.get("recalibration", "platt")
        known = {"champion": (self.champion_operating_point, self.champion_calibration)} \
            if self.champion_operating_point else {}
        wanted = [role for role in ("candidate", "champion") if role not in known]
        record: dict[str, OperatingPointChoice] = {}
        self._record.operating_points = record
        for role, (op, cal) in known.items():
            record[role] = OperatingPointChoice(operating_point=dict(op) if op is not None else None,
                                                calibration=dict(cal) if cal is not None else None,
                                                source="the model version's record")
        collected = self._collect(OPERATING_POINT_TASK, FLModel(params=join_models({r: models[r] for r in wanted}),
                                                                params_type=ParamsType.FULL), sites, ("candidate", "champion"))
        for role in wanted:
            payloads = {site: rep[role] for site, rep in collected.items() if role in rep}
            entry = OperatingPointChoice(source=f"chosen from the validation histograms of {len(payloads)} site(s)",
                                         operating_point=None, calibration=None)
            record[role] = entry
            if not payloads:
                entry.error = "no site sent validation histograms"
                continue
            try:
                entry.operating_point = operating_point_from_payloads(payloads, target, value)
            except ValueError as err:  # e.g. one class only in every validation split
                entry.error = str(err)
                continue
            if method != "none":
                try:
                    entry.calibration = recalibrate_from_payloads(sum_histograms(payloads), method)
                except ValueError as err:  # e.g. scores that rank positives below negatives
                    entry.calibration_error = str(err)
        sent = {}
        for role, entry in record.items():
            if entry.operating_point:
                cal = entry.calibration
                sent[role] = {"threshold": float(entry.operating_point["threshold"]),
                              "calibration": {"a": float(cal["a"]), "b": float(cal["b"])} if cal else None}
        return sent

    def _collect(self, task: str, data: FLModel, sites: list[str], roots: tuple[str, ...]) -> dict[str, dict]:
        results = self.send_model_and_wait(task_name=task, data=data, targets=sites, min_responses=len(sites),
                                           timeout=self.timeout)
        kept: dict[str, dict] = {}
        for result in results:
            sorted_ = classify_result(result.meta, _report_checks(result, roots, kept), task=task)
            site = sorted_.site
            if sorted_.refusal is not None:
                self.warning(f"{site} refused {task}: {sorted_.reason}")
                self._record.refused.append(sorted_.refusal)
            elif sorted_.rejection is not None:
                self.warning(f"rejected {task} result from {site}: {sorted_.reason}")
                self._record.rejected.append(sorted_.rejection)
            elif sorted_.outcome == "accepted":
                kept[site] = unflatten_metrics(result.metrics or {})
        missing = sorted(set(sites) - set(kept) - {r.site for r in self._record.refused if r.task == task}
                         - {r.site for r in self._record.rejected if r.task == task})
        for site in missing:  # a dropped site, or none answered in time
            self._record.rejected.append(Rejection(task=task, site=site, reason="no result before the timeout"))
        return kept


def _report_checks(result: FLModel, roots: tuple[str, ...], kept: dict[str, dict]) -> list:
    """A metrics-only task's checks, in order: no tensors, the aggregate report's schema, one result per site."""
    def no_tensors() -> str | None:
        return f"{len(result.params)} tensors in a metrics-only task" if result.params else None

    return [no_tensors, lambda: check_aggregate_payload(result.metrics or {}, roots),
            duplicate(site_of(result.meta), kept, "second result from the same site")]

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
site's reason. The record is written to the run folder as ``ai4hi_validation.json``; its
``operating_points`` hold, per model, the chosen operating point, the recalibration and where they
came from. If the candidate's operating point cannot be chosen (no site sent histograms, one class
only), the job fails without validating: a model without an operating point is never judged.
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
from ai4hi_sdk.jobs.wire import (APP_DATA_DIR, CROSS_VALIDATE_TASK, MONITOR_TASK, OPERATING_POINT_TASK,
                                 OPERATING_POINTS_META, REFUSED_KEY, VALIDATION_RESULT_FILE, join_models)
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
        if "validate" in self.tasks and self.site_candidates:
            started = time.time()
            self._record["validation"], self._record["candidate_sha256_by_site"] = {}, {}
            for site in sites:
                if site not in self.site_candidates:
                    continue
                candidate = self._load(self.site_candidates[site])
                self._record["candidate_sha256_by_site"][site] = model_sha256(candidate)
                data = FLModel(params=join_models({"candidate": candidate, "champion": champion}),
                               params_type=ParamsType.FULL)
                self._record["validation"].update(self._collect(CROSS_VALIDATE_TASK, data, [site], REPORT_ROOTS))
            self._record["validation_seconds"] = round(time.time() - started, 3)
            self._write()
        elif "validate" in self.tasks:
            candidate = self._load(self.candidate_file)
            self._record["candidate_sha256"] = model_sha256(candidate)
            started = time.time()
            meta: dict[str, Any] = {}
            if self.operating_point:
                chosen = self._operating_points({"candidate": candidate, "champion": champion}, sites)
                if "candidate" not in chosen:
                    self._record["status"] = "failed"
                    self._record["reason"] = ("no operating point for the candidate: "
                                              + self._record["operating_points"]["candidate"].get("error", "?"))
                    self._write()
                    self.error(f"ai4hi validation job failed: {self._record['reason']}")
                    return
                meta[OPERATING_POINTS_META] = chosen
                self._record["operating_point_seconds"] = round(time.time() - started, 3)
                self._write()
            data = FLModel(params=join_models({"candidate": candidate, "champion": champion}),
                           params_type=ParamsType.FULL, meta=meta)
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
        record: dict[str, dict] = {}
        self._record["operating_points"] = record
        for role, (op, cal) in known.items():
            record[role] = {"operating_point": op, "calibration": cal, "source": "the model version's record"}
        collected = self._collect(OPERATING_POINT_TASK, FLModel(params=join_models({r: models[r] for r in wanted}),
                                                                params_type=ParamsType.FULL), sites, ("candidate", "champion"))
        for role in wanted:
            payloads = {site: rep[role] for site, rep in collected.items() if role in rep}
            entry: dict[str, Any] = {"source": f"chosen from the validation histograms of {len(payloads)} site(s)",
                                     "operating_point": None, "calibration": None}
            record[role] = entry
            if not payloads:
                entry["error"] = "no site sent validation histograms"
                continue
            try:
                entry["operating_point"] = operating_point_from_payloads(payloads, target, value)
            except ValueError as err:  # e.g. one class only in every validation split
                entry["error"] = str(err)
                continue
            if method != "none":
                try:
                    entry["calibration"] = recalibrate_from_payloads(sum_histograms(payloads), method)
                except ValueError as err:  # e.g. scores that rank positives below negatives
                    entry["calibration_error"] = str(err)
        sent = {}
        for role, entry in record.items():
            if entry.get("operating_point"):
                cal = entry.get("calibration")
                sent[role] = {"threshold": float(entry["operating_point"]["threshold"]),
                              "calibration": {"a": float(cal["a"]), "b": float(cal["b"])} if cal else None}
        return sent

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

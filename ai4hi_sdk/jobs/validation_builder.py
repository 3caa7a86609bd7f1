"""Validation / monitoring job -> NVFlare job folder (a ``Recipe`` around a ``FedJob``).

Server: :class:`~ai4hi_sdk.jobs.components.validation_controller.Ai4hiValidationController` with the
candidate and champion state dicts in its custom folder, and the receipt log filter. Sites:
NVFlare's ``ClientAPIExecutor`` running ``ai4hi_validation_main.py`` in-process with the job's own
trainer class, and the same :class:`~ai4hi_sdk.jobs.components.payload_log.EgressLogFilter` as
training jobs as the last task-result filter, so every payload that leaves is logged.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping, Sequence

import torch
from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
from nvflare.client.config import ExchangeFormat, TransferType
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType
from nvflare.recipe.spec import Recipe

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.jobs.components.payload_log import EgressLogFilter, ReceiptLogFilter
from ai4hi_sdk.jobs.components.validation_controller import (
    CANDIDATE_FILE,
    CHAMPION_FILE,
    Ai4hiValidationController,
)
from ai4hi_sdk.jobs.site_main import write_spec_file
from ai4hi_sdk.jobs.validation_site_main import VALIDATION_TASKS, write_validation_file

ENTRY_SCRIPT = Path(__file__).with_name("ai4hi_validation_main.py")
TASK_KINDS = ("validate", "monitor")


def _write_state(state: Mapping[str, torch.Tensor] | str | Path, path: Path) -> Path:
    if isinstance(state, (str, Path)):
        state = torch.load(state, map_location="cpu", weights_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.as_tensor(v).float().contiguous() for k, v in state.items()}, path)
    return path


class Ai4hiValidationRecipe(Recipe):
    """NVFlare recipe of a validation and/or monitoring job.

    Args:
        spec: the training job spec (its trainer class builds the model and reads the site data).
        config: validation settings.
        staging_dir: where the spec, settings and model files are written before being copied in.
        champion: the deployed model (state dict or ``.pt`` file).
        candidate: the model to evaluate against it (required for the ``validate`` task).
        tasks: ``("validate",)``, ``("monitor",)`` or both.
        data_root: default data root for sites that do not set their own.
    """

    def __init__(self, spec: JobSpec, config: ValidationSpec, staging_dir: str | Path,
                 champion: Mapping[str, torch.Tensor] | str | Path,
                 candidate: Mapping[str, torch.Tensor] | str | Path | None = None,
                 tasks: Sequence[str] = ("validate",), data_root: str | Path | None = None, name: str | None = None):
        tasks = [t for t in TASK_KINDS if t in tasks]
        if not tasks:
            raise ValueError(f"tasks must name at least one of {TASK_KINDS}")
        if "validate" in tasks and candidate is None:
            raise ValueError("a validation task needs a candidate model")
        staging = Path(staging_dir)
        spec_file = write_spec_file(spec, staging)
        config_file = write_validation_file(config, staging)
        champion_file = _write_state(champion, staging / CHAMPION_FILE)
        candidate_file = _write_state(candidate, staging / CANDIDATE_FILE) if candidate is not None else None

        job = FedJob(name=name or f"{spec.name}-{'-'.join(tasks)}", min_clients=1)
        job.set_app_packages(["ai4hi_sdk"])
        job.to_server(Ai4hiValidationController(candidate_file=CANDIDATE_FILE if candidate_file else "",
                                                champion_file=CHAMPION_FILE, tasks=tasks, timeout=config.timeout_s),
                      id="ai4hi_validation_controller")
        job.to_server(ReceiptLogFilter(), id="ai4hi_receipt_log", filter_type=FilterType.TASK_RESULT,
                      tasks=VALIDATION_TASKS)
        executor = ClientAPIExecutor(
            execution_mode="in_process",
            task_script_path=ENTRY_SCRIPT.name,
            task_script_args=f"--data-root {Path(data_root).resolve()}" if data_root is not None else "",
            params_exchange_format=ExchangeFormat.PYTORCH,
            server_expected_format=ExchangeFormat.PYTORCH,
            params_transfer_type=TransferType.FULL,
        )
        job.to_clients(executor, id="ai4hi_executor", tasks=VALIDATION_TASKS)
        job.to_clients(EgressLogFilter(), id="ai4hi_egress_log", filter_type=FilterType.TASK_RESULT,
                       tasks=VALIDATION_TASKS)
        job.add_file_to_clients(str(ENTRY_SCRIPT))
        for f in (spec_file, config_file):
            job.add_file_to_clients(str(f))
            job.add_file_to_server(str(f))
        for f in (champion_file, candidate_file):
            if f is not None:
                job.add_file_to_server(str(f))
        for entry, code_file in zip(spec.code, spec.code_paths()):
            dest = str(Path(entry).parent) if Path(entry).parent != Path(".") else None
            job.add_file_to_clients(str(code_file), dest_dir=dest)
        super().__init__(job)
        self.add_server_config({"server": {"task_request_interval": 0.5}})


def export_validation_job(spec: JobSpec, config: ValidationSpec, out_dir: str | Path, *,
                          champion: Mapping[str, torch.Tensor] | str | Path,
                          candidate: Mapping[str, torch.Tensor] | str | Path | None = None,
                          tasks: Sequence[str] = ("validate",), data_root: str | Path | None = None) -> Path:
    """Write the NVFlare job folder under ``out_dir``; returns the job folder."""
    out_dir = Path(out_dir)
    staging = out_dir / ".ai4hi_staging"
    try:
        recipe = Ai4hiValidationRecipe(spec, config, staging, champion=champion, candidate=candidate, tasks=tasks,
                                       data_root=data_root)
        recipe.export(str(out_dir))
        name = recipe.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / name

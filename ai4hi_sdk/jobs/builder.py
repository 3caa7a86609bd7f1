"""Job spec -> NVFlare job (a ``Recipe`` around a ``FedJob``), ready to simulate, export or submit.

Server: :class:`~ai4hi_sdk.jobs.components.controller.Ai4hiFedAvg` and the receipt log filter.
Sites: NVFlare's ``ClientAPIExecutor`` running ``ai4hi_site_main.py`` (which calls
:func:`ai4hi_sdk.jobs.site_main.main`) in-process, and the egress log filter as the last
task-result filter. The SDK is expected to be installed at every site, so its code is not copied
into the job (``set_app_packages``); only the entry script and the spec's ``code`` files are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
from nvflare.client.config import ExchangeFormat, TransferType
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType
from nvflare.recipe.spec import Recipe

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.jobs.components.controller import INITIAL_MODEL_FILE, Ai4hiFedAvg, initial_state_mismatch
from ai4hi_sdk.jobs.components.secagg_wire import PROTOCOL_TASKS
from ai4hi_sdk.jobs.components.payload_log import EgressLogFilter, ReceiptLogFilter
from ai4hi_sdk.jobs.site_main import SPEC_FILE, write_spec_file
from ai4hi_sdk.trainers.site_trainer import TRAIN_TASK, VALIDATE_TASK

ENTRY_SCRIPT = Path(__file__).with_name("ai4hi_site_main.py")
# the protocol tasks only ever reach sites when the job turns secure aggregation on
SITE_TASKS = [TRAIN_TASK, VALIDATE_TASK, *PROTOCOL_TASKS]
TASK_REQUEST_INTERVAL_S = 0.5


class Ai4hiTrainingRecipe(Recipe):
    """NVFlare recipe for an ai4hi training job.

    Args:
        spec: validated job spec.
        staging_dir: folder where the spec file is written before it is copied into the job.
        data_root: folder with one sub-folder per site (simulation and demos); a site's own
            ``AI4HI_SITE_DATA_DIR`` / ``AI4HI_DATA_ROOT`` environment wins over it.
        train_timeout: seconds the server waits for one training round's results.
    """

    def __init__(self, spec: JobSpec, staging_dir: str | Path, data_root: str | Path | None = None,
                 train_timeout: int = 3600):
        self.spec = spec
        spec_file = write_spec_file(spec, staging_dir)
        job = FedJob(name=spec.name, min_clients=spec.min_sites)
        job.set_app_packages(["ai4hi_sdk"])
        job.to_server(Ai4hiFedAvg(job_spec=SPEC_FILE, num_rounds=spec.train.rounds,
                                  min_sites=spec.min_sites, train_timeout=train_timeout), id="ai4hi_controller")
        job.to_server(ReceiptLogFilter(), id="ai4hi_receipt_log", filter_type=FilterType.TASK_RESULT,
                      tasks=SITE_TASKS)

        script_args = f"--data-root {Path(data_root).resolve()}" if data_root is not None else ""
        executor = ClientAPIExecutor(
            execution_mode="in_process",
            task_script_path=ENTRY_SCRIPT.name,
            task_script_args=script_args,
            params_exchange_format=ExchangeFormat.PYTORCH,
            server_expected_format=ExchangeFormat.PYTORCH,
            params_transfer_type=TransferType.DIFF,
        )
        job.to_clients(executor, id="ai4hi_executor", tasks=SITE_TASKS)
        job.to_clients(EgressLogFilter(), id="ai4hi_egress_log", filter_type=FilterType.TASK_RESULT,
                       tasks=SITE_TASKS)
        job.add_file_to_clients(str(ENTRY_SCRIPT))
        job.add_file_to_clients(str(spec_file))
        job.add_file_to_server(str(spec_file))
        for entry, code_file in zip(spec.code, spec.code_paths()):
            # keep the file's folder relative to the spec, so the same sys.path rule works at sites
            dest = str(Path(entry).parent) if Path(entry).parent != Path(".") else None
            job.add_file_to_clients(str(code_file), dest_dir=dest)
            job.add_file_to_server(str(code_file), dest_dir=dest)
        super().__init__(job)
        # NVFlare tells an idle site to ask again after 2 s; with a handful of sites that idle wait
        # is most of a round's overhead (benchmarks/round_overhead.py), so sites ask more often
        self.add_server_config({"server": {"task_request_interval": TASK_REQUEST_INTERVAL_S}})


def export_job(spec: JobSpec, out_dir: str | Path, data_root: str | Path | None = None) -> Path:
    """Write the NVFlare job folder for ``spec`` under ``out_dir``; returns the job folder."""
    out_dir = Path(out_dir)
    staging = out_dir / ".ai4hi_staging"
    try:
        Ai4hiTrainingRecipe(spec, staging_dir=staging, data_root=data_root).export(str(out_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / spec.name


def install_initial_model(spec: JobSpec, job_dir: str | Path, initial_model: str | Path) -> str:
    """Ship ``initial_model`` with the exported job as its initial global model (warm start).

    The file must be a ``torch.save``d state dict whose floating-point entries are exactly the
    exchanged state of the job's freshly built model (same names and shapes; other entries are
    ignored), e.g. a previous job's ``global_model.pt``. It is checked here (UserError naming the
    file and the mismatch) and again by the server, then written as float32 next to the job's spec
    file (``app*/custom/ai4hi_initial_model.pt``), where the server's controller loads it instead of
    the seeded model. Returns the sha256 of the installed state (:func:`describe_payload` digest).
    """
    import torch

    from ai4hi_sdk.privacy.egress import describe_payload

    path = Path(initial_model)
    if not path.is_file():
        raise UserError(f"initial model '{path}' not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"initial model '{path}' is not a torch state dict file: {err}") from None
    reference = spec.trainer_class()(spec, site_dir=None, site_name="server", device="cpu").initial_state()
    problem = initial_state_mismatch(state, reference)
    if problem:
        raise UserError(f"initial model '{path}' cannot start job '{spec.name}': {problem}")
    state = {name: state[name].detach().to(torch.float32).contiguous() for name in reference}
    targets = sorted(Path(job_dir).glob(f"*/custom/{SPEC_FILE}"))
    if not targets:
        raise UserError(f"no app with a job spec ({SPEC_FILE}) under '{job_dir}'")
    for spec_file in targets:
        torch.save(state, spec_file.with_name(INITIAL_MODEL_FILE))
    return describe_payload(state)["sha256"]

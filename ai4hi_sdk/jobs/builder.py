"""Job spec -> NVFlare job (a ``Recipe`` around a ``FedJob``), ready to simulate, export or submit.

One recipe base for every ai4hi job (:class:`Ai4hiRecipe`):

* **sites** run one component from the SDK installed at the site,
  :class:`~ai4hi_sdk.site.executor.Ai4hiSiteExecutor`, on every task, and the site's egress guard
  as the task-result filter. The job's settings and its custom code (if any, as a hashed bundle)
  travel as the executor's arguments: a site app has **no** ``custom/`` folder, so NVFlare treats
  the job as made of site-installed classes only, and a site runs custom code only when its
  policy allows the bundle's SHA-256;
* **the server** runs the job kind's controller and the receipt log filter. Model files the
  server reads (warm start, champion, candidate) travel in the app's ``ai4hi_data/`` folder: data,
  not code, so the job stays free of custom code.
* a **base checkpoint** (``model.checkpoint``, a backbone folder relative to the spec) never
  travels: the job carries only its sha256 (``model.checkpoint_sha256``, set here after verifying
  the folder) and each site loads its own copy from its backbone store
  (:mod:`ai4hi_sdk.site.backbones`). The round-0 exchanged state computed from it by the lead (the
  adapters and head, or the trainable blocks) is shipped as the initial model, so the server never
  needs the backbone either.

:class:`Ai4hiTrainingRecipe` (FedAvg, with or without secure aggregation) and
:class:`Ai4hiValidationRecipe` (candidate vs champion, drift monitoring) differ only in the
controller and the tasks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType
from nvflare.recipe.spec import Recipe

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.jobs.components.payload_log import ReceiptLogFilter
from ai4hi_sdk.jobs.wire import (APP_DATA_DIR, BASE_CHECKPOINT_KEY, BASE_CHECKPOINT_SHA256_KEY, INITIAL_MODEL_FILE,
                                 TRAINING_TASKS, VALIDATION_TASKS, WIRE_VERSION)
from ai4hi_sdk.site.code_bundle import bundle_sha256, pack_code
from ai4hi_sdk.site.egress_guard import Ai4hiEgressGuard
from ai4hi_sdk.site.executor import Ai4hiSiteExecutor
from ai4hi_sdk.tasks.registry import task_strategy

TASK_REQUEST_INTERVAL_S = 0.5
VALIDATION_KINDS = ("validate", "monitor")


def base_checkpoint(spec: JobSpec) -> tuple[Path, str] | None:
    """The spec's base checkpoint as the lead holds it: ``(backbone folder, sha256)``, its bytes checked
    against its provenance record and against ``model.checkpoint_sha256`` when the spec pins one;
    None when the job has none.

    Raises:
        UserError: naming the field and the reason.
    """
    from ai4hi_sdk.site.backbones import backbone_folder, read_backbone_sha256

    path, pinned = spec.model.get(BASE_CHECKPOINT_KEY), spec.model.get(BASE_CHECKPOINT_SHA256_KEY)
    if path is None and pinned is None:
        return None
    if path is None:
        raise UserError(f"job '{spec.name}': model.{BASE_CHECKPOINT_SHA256_KEY} without model.{BASE_CHECKPOINT_KEY}: "
                        "give the backbone folder too (the job's round-0 state is computed from it)")
    folder = Path(str(path))
    folder = backbone_folder(folder if folder.is_absolute() else Path(spec.base_dir) / folder)
    try:
        sha = read_backbone_sha256(folder)
    except UserError as err:
        raise UserError(f"job '{spec.name}': model.{BASE_CHECKPOINT_KEY}: {err}") from None
    if pinned is not None and sha != str(pinned).lower():
        raise UserError(f"job '{spec.name}': model.{BASE_CHECKPOINT_KEY}: {folder} has sha256 {sha}, but "
                        f"model.{BASE_CHECKPOINT_SHA256_KEY} says {pinned}")
    return folder, sha


def spec_payload(spec: JobSpec) -> dict[str, Any]:
    """The spec as it travels in a job (JSON form; ``base_dir`` stays with the lead). A base
    checkpoint travels as its sha256 only (:func:`base_checkpoint`)."""
    data = spec.model_dump(mode="json")
    found = base_checkpoint(spec)
    if found is not None:
        model = {k: v for k, v in data["model"].items() if k != BASE_CHECKPOINT_KEY}
        data["model"] = {**model, BASE_CHECKPOINT_SHA256_KEY: found[1]}
    return data


def code_bundle(spec: JobSpec) -> dict[str, str]:
    """The spec's ``code`` files as a bundle (UserError for a file that leaves the job's folder)."""
    return pack_code(spec.base_dir, spec.code) if spec.code else {}


def code_sha256(spec: JobSpec) -> str | None:
    """SHA-256 of the spec's code bundle, the value a site admin allows (None without code)."""
    bundle = code_bundle(spec)
    return bundle_sha256(bundle) if bundle else None


class Ai4hiRecipe(Recipe):
    """NVFlare recipe of an ai4hi job: the site runtime at every site, ``controller`` at the server.

    Args:
        name: the job's name.
        spec: the job spec (its trainer builds the model at sites and at the server).
        controller: the server's workflow component.
        tasks: task names the sites serve.
        min_sites: NVFlare's ``min_clients``.
        data_root: default data root for sites that do not set their own.
        validation: validation settings of a validation/monitoring job.
    """

    def __init__(self, name: str, spec: JobSpec, controller: Any, tasks: Sequence[str], min_sites: int,
                 data_root: str | Path | None = None, validation: ValidationSpec | None = None,
                 payload: dict[str, Any] | None = None):
        self.spec = spec
        self.spec_name = name
        job = FedJob(name=name, min_clients=min_sites)
        job.set_app_packages(["ai4hi_sdk"])  # the SDK is installed at every site: never copied into the job
        job.to_server(controller, id="ai4hi_controller")
        job.to_server(ReceiptLogFilter(), id="ai4hi_receipt_log", filter_type=FilterType.TASK_RESULT,
                      tasks=list(tasks))
        executor = Ai4hiSiteExecutor(job=payload if payload is not None else spec_payload(spec), code=code_bundle(spec),
                                     validation=validation.model_dump(mode="json") if validation else None,
                                     data_root=str(Path(data_root).resolve()) if data_root is not None else None,
                                     wire_version=WIRE_VERSION)
        job.to_clients(executor, id="ai4hi_executor", tasks=list(tasks))
        job.to_clients(Ai4hiEgressGuard(), id="ai4hi_egress_guard", filter_type=FilterType.TASK_RESULT,
                       tasks=list(tasks))
        super().__init__(job)
        #: file name -> state dict or .pt path, written into every app's ai4hi_data/ on export
        self.data_files: dict[str, Any] = {}
        # NVFlare tells an idle site to ask again after 2 s; with a handful of sites that idle wait
        # is most of a round's overhead (benchmarks/round_overhead.py), so sites ask more often
        self.add_server_config({"server": {"task_request_interval": TASK_REQUEST_INTERVAL_S}})


class Ai4hiTrainingRecipe(Ai4hiRecipe):
    """NVFlare recipe for an ai4hi training job.

    Args:
        spec: validated job spec.
        staging_dir: kept for callers that pass it (nothing is staged any more).
        data_root: folder with one sub-folder per site (simulation and demos); a site's own
            ``AI4HI_SITE_DATA_DIR`` / ``AI4HI_DATA_ROOT`` environment or ``ai4hi/site.yaml`` wins.
        train_timeout: seconds the server waits for one training round's results.
    """

    def __init__(self, spec: JobSpec, staging_dir: str | Path | None = None, data_root: str | Path | None = None,
                 train_timeout: int = 3600):
        from ai4hi_sdk.jobs.components.controller import Ai4hiFedAvg

        payload = spec_payload(spec)
        controller = Ai4hiFedAvg(job=payload, code=code_bundle(spec), num_rounds=spec.train.rounds,
                                 min_sites=spec.min_sites, train_timeout=train_timeout)
        super().__init__(spec.name, spec, controller, TRAINING_TASKS, spec.min_sites, data_root, payload=payload)
        if BASE_CHECKPOINT_SHA256_KEY in payload["model"]:
            # the round-0 exchanged state from the lead's verified backbone: the server holds no backbone
            self.data_files[INITIAL_MODEL_FILE] = lead_initial_state(spec)


class Ai4hiValidationRecipe(Ai4hiRecipe):
    """NVFlare recipe of a validation and/or monitoring job.

    Args:
        spec: the training job spec (its trainer class builds the model and reads the site data).
        config: validation settings.
        staging_dir: where the candidate and champion files are written before going into the
            server app.
        champion: the deployed model (state dict or ``.pt`` file).
        candidate: the model to evaluate against it (required for the ``validate`` task).
        tasks: ``("validate",)``, ``("monitor",)`` or both.
        data_root: default data root for sites that do not set their own.
    """

    def __init__(self, spec: JobSpec, config: ValidationSpec, staging_dir: str | Path,
                 champion: Mapping[str, Any] | str | Path, candidate: Mapping[str, Any] | str | Path | None = None,
                 tasks: Sequence[str] = ("validate",), data_root: str | Path | None = None, name: str | None = None,
                 champion_operating_point: Mapping[str, Any] | None = None,
                 champion_calibration: Mapping[str, Any] | None = None,
                 site_candidates: Mapping[str, Mapping[str, Any] | str | Path] | None = None):
        from ai4hi_sdk.jobs.components.validation_controller import (CANDIDATE_FILE, CHAMPION_FILE,
                                                                     Ai4hiValidationController)

        kinds = [t for t in VALIDATION_KINDS if t in tasks]
        if not kinds:
            raise ValueError(f"tasks must name at least one of {VALIDATION_KINDS}")
        if "validate" in kinds and candidate is None and not site_candidates:
            raise ValueError("a validation task needs a candidate model")
        site_files = {site: f"candidate_{site}.pt" for site in site_candidates or {}}
        # an operating point is a threshold on scores: only a task kind that has scores takes one
        strategy = task_strategy(spec.task)
        strategy.validated_metric()  # a kind whose jobs are not validated (pretrain): ConfigError
        operating_point = config.operating_point.model_dump(mode="json") \
            if config.operating_point is not None and strategy.supports_operating_point else None
        controller = Ai4hiValidationController(
            candidate_file=CANDIDATE_FILE if candidate is not None else "", champion_file=CHAMPION_FILE, tasks=kinds,
            timeout=config.timeout_s, operating_point=operating_point,
            champion_operating_point=_json(champion_operating_point) if operating_point else None,
            champion_calibration=_json(champion_calibration) if operating_point else None,
            site_candidates=site_files or None)
        super().__init__(name or f"{spec.name}-{'-'.join(kinds)}", spec, controller, VALIDATION_TASKS, 1, data_root,
                         validation=config)
        self.data_files[CHAMPION_FILE] = champion
        if candidate is not None:
            self.data_files[CANDIDATE_FILE] = candidate
        for site, state in (site_candidates or {}).items():
            self.data_files[site_files[site]] = state


def _json(value: Mapping[str, Any] | None) -> dict | None:
    """A record as plain JSON data (it travels in the job's configuration)."""
    import json

    return None if value is None else json.loads(json.dumps(dict(value)))


def _write_state(state: Mapping[str, Any] | str | Path, path: Path) -> Path:
    import torch

    tensors: Mapping[str, Any] = (torch.load(state, map_location="cpu", weights_only=True)
                                  if isinstance(state, (str, Path)) else state)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.as_tensor(v).float().contiguous() for k, v in tensors.items()}, path)
    return path


def app_dirs(job_dir: str | Path) -> list[Path]:
    """The app folders of an exported job."""
    return sorted(p.parent.parent for p in Path(job_dir).glob("*/config/config_fed_*.json"))


def export_recipe(recipe: Ai4hiRecipe, out_dir: str | Path) -> Path:
    """Export ``recipe`` under ``out_dir`` with its data files; returns the job folder."""
    import warnings

    out_dir = Path(out_dir)
    with warnings.catch_warnings():
        # the code bundle is base64 text: NVFlare's secret scan flags it as high-entropy
        warnings.filterwarnings("ignore", message="Potential secret value in exported job file")
        recipe.export(str(out_dir))
    job_dir = out_dir / recipe.spec_name
    for app in app_dirs(job_dir):
        for name, state in recipe.data_files.items():
            _write_state(state, app / APP_DATA_DIR / name)
    return job_dir


def _export(recipe_factory: Any, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    staging = out_dir / ".ai4hi_staging"
    try:
        return export_recipe(recipe_factory(staging), out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_job(spec: JobSpec, out_dir: str | Path, data_root: str | Path | None = None) -> Path:
    """Write the NVFlare job folder for ``spec`` under ``out_dir``; returns the job folder."""
    return _export(lambda staging: Ai4hiTrainingRecipe(spec, data_root=data_root), out_dir)


def export_validation_job(spec: JobSpec, config: ValidationSpec, out_dir: str | Path, *,
                          champion: Mapping[str, Any] | str | Path,
                          candidate: Mapping[str, Any] | str | Path | None = None,
                          tasks: Sequence[str] = ("validate",), data_root: str | Path | None = None,
                          champion_operating_point: Mapping[str, Any] | None = None,
                          champion_calibration: Mapping[str, Any] | None = None,
                          site_candidates: Mapping[str, Any] | None = None) -> Path:
    """Write the NVFlare job folder of a validation/monitoring job under ``out_dir`` (the champion's
    operating point and recalibration, when its model version has them, travel to the server;
    ``site_candidates``: one candidate per site instead of ``candidate``)."""
    return _export(lambda staging: Ai4hiValidationRecipe(
        spec, config, staging, champion=champion, candidate=candidate, tasks=tasks, data_root=data_root,
        champion_operating_point=champion_operating_point, champion_calibration=champion_calibration,
        site_candidates=site_candidates), out_dir)


def lead_initial_state(spec: JobSpec) -> dict[str, Any]:
    """The job's round-0 exchanged state built by the lead (the spec's trainer, model only, on the CPU)."""
    from ai4hi_sdk.trainers.loading import trainer_class_for

    return trainer_class_for(spec)(spec, site_dir=None, site_name="server", device="cpu").initial_state()


def install_initial_model(spec: JobSpec, job_dir: str | Path, initial_model: str | Path) -> str:
    """Ship ``initial_model`` with the exported job as its initial global model (warm start).

    The file must be a ``torch.save``d state dict whose floating-point entries are exactly the
    exchanged state of the job's freshly built model (same names and shapes; other entries are
    ignored), e.g. a previous job's ``global_model.pt``. It is checked here (UserError naming the
    file and the mismatch) and again by the server, then written as float32 into the job's
    ``ai4hi_data/`` folder (data, not code), where the server's controller loads it instead of the
    seeded model. Returns the sha256 of the installed state.
    """
    import torch

    from ai4hi_sdk.jobs.components.controller import initial_state_mismatch
    from ai4hi_sdk.privacy.egress import model_sha256

    path = Path(initial_model)
    if not path.is_file():
        raise UserError(f"initial model '{path}' not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"initial model '{path}' is not a torch state dict file: {err}") from None
    reference = lead_initial_state(spec)
    problem = initial_state_mismatch(state, reference)
    if problem:
        raise UserError(f"initial model '{path}' cannot start job '{spec.name}': {problem}")
    state = {name: state[name].detach().to(torch.float32).contiguous() for name in reference}
    apps = [a for a in app_dirs(job_dir) if (a / "config" / "config_fed_server.json").is_file()]
    if not apps:
        raise UserError(f"no server app under '{job_dir}'")
    for app in apps:
        (app / APP_DATA_DIR).mkdir(exist_ok=True)
        torch.save(state, app / APP_DATA_DIR / INITIAL_MODEL_FILE)
    return model_sha256(state)

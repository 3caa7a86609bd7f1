"""The site admin's readiness report (``ai4hi site check KIT --data DIR``).

Each check says what was checked, whether it passed and why. A ``fail`` makes the site not
ready (non-zero exit); a ``warn`` is reported but does not (e.g. the server is not up yet).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ai4hi_sdk.deploy.kit import Check, Kit, check_certificates
from ai4hi_sdk.deploy.processes import is_running
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.config.site_policy import SITE_POLICY, load_site_policy
from ai4hi_sdk.provision.provision import EGRESS_FILTER, LOG_STREAMER, SITE_CLASSES
from ai4hi_sdk.site_paths import SITE_SETTINGS



@dataclass
class Readiness:
    """All checks of one kit, plus the DICOM summary and the policy in force (for display)."""

    kit: Kit
    checks: list[Check] = field(default_factory=list)
    data_summary: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    #: (folder the site will read or None, why that one) for sites
    site_reads: tuple[Path | None, str] | None = None

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def host_gpus() -> tuple[int, str]:
    """GPUs NVFlare's GPUResourceManager will see (nvidia-smi, restricted by CUDA_VISIBLE_DEVICES),
    and how they were found."""
    try:
        from nvflare.app_common.resource_managers.gpu_resource_manager import _get_managed_host_gpu_ids
        from nvflare.fuel.utils.gpu_utils import get_host_gpu_ids, has_nvidia_smi
    except ImportError:  # pragma: no cover - NVFlare moved its helpers
        return 0, "cannot query GPUs the way NVFlare does"
    if not has_nvidia_smi():
        return 0, "no nvidia-smi on PATH"
    try:
        return len(_get_managed_host_gpu_ids(get_host_gpu_ids())), "nvidia-smi"
    except Exception as err:  # nvidia-smi present but failing (driver problem)
        return 0, f"nvidia-smi failed: {err}"


def check_gpus(kit: Kit, available: int | None = None, how: str = "") -> list[Check]:
    """The GPUs the kit's resources.json asks for vs what this machine has. NVFlare's resource
    manager refuses to start a site that asks for more GPUs than it can see."""
    requested = kit.requested_gpus
    if available is None:
        available, how = host_gpus()
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        cuda = False
    checks = []
    if requested > available:
        checks.append(Check("GPUs", "fail",
                            f"local/resources.json asks for {requested} GPU(s) (num_of_gpus) but this machine has "
                            f"{available} ({how}): NVFlare's GPUResourceManager will refuse to start the site. "
                            f"Install the GPU/driver, or set num_of_gpus to {available} in {kit.path}/local/resources.json"))
    else:
        checks.append(Check("GPUs", "ok", f"{requested} requested, {available} available ({how})"))
    if requested > 0 and not cuda:
        checks.append(Check("CUDA", "warn", "the installed torch cannot use CUDA: training will run on CPU "
                                            "(install the CUDA build of torch into the site's environment)"))
    elif available > 0 and requested == 0:
        checks.append(Check("CUDA", "warn", f"{available} GPU(s) present but the kit requests none"))
    else:
        checks.append(Check("CUDA", "ok", "torch can use CUDA" if cuda else "CPU training (no GPU requested)"))
    return checks


def check_nvflare_preflight(kit: Kit) -> list[Check]:
    """NVFlare's own preflight rules that are quick and side-effect free (``nvflare preflight_check``
    also dry-runs the site, which would register a second client with a live server and cleans up
    with ``pkill -f``; we leave that out): server reachable (site), ports free (server)."""
    from nvflare.tool.package_checker.check_rule import CHECK_PASSED, CheckAddressBinding, CheckServerAvailable

    if kit.kind == "site":
        result = CheckServerAvailable("server available", role="client")(str(kit.path), None)
        host, port = kit.server_target
        if result.problem == CHECK_PASSED:
            return [Check("server reachable", "ok", f"NVFlare preflight: server at {host}:{port} accepts connections")]
        return [Check("server reachable", "warn",
                      f"NVFlare preflight: {result.problem} (fine if the server is not started yet; the site "
                      "keeps retrying once started)")]
    if is_running(kit):
        return [Check("ports", "ok", "the server is running from this kit")]
    checks = []
    for port in (p for p in (kit.server_target[1], kit.admin_port) if p is not None):
        result = CheckAddressBinding("bind", lambda _p, port=port: ("127.0.0.1", port))(str(kit.path))
        checks.append(Check(f"port {port}", "ok" if result.problem == CHECK_PASSED else "fail",
                            "free" if result.problem == CHECK_PASSED else f"NVFlare preflight: {result.problem}"))
    return checks


def check_site_config(kit: Kit) -> list[Check]:
    """The site-enforced privacy scope (privacy.json) and class allow list written by ``ai4hi provision``."""
    privacy = kit.path / "local" / "privacy.json"
    if not privacy.is_file():
        return [Check("site-enforced filters", "fail",
                      f"{privacy} is missing: the site's egress log would depend on each job; re-run 'ai4hi provision'")]
    try:
        config = json.loads(privacy.read_text())
        scopes = {s["name"]: s for s in config.get("scopes", [])}
        default = scopes[config["default_scope"]]
        paths = [f.get("path", "") for f in default.get("task_result_filters", [])]
    except (ValueError, KeyError, TypeError) as err:
        return [Check("site-enforced filters", "fail", f"{privacy} is not a valid NVFlare privacy config: {err}")]
    if EGRESS_FILTER not in paths:
        return [Check("site-enforced filters", "fail",
                      f"the default privacy scope of {privacy} does not run the egress guard (filters: {paths}); "
                      "re-run 'ai4hi provision'")]
    checks = [Check("site-enforced filters", "ok",
                    f"privacy.json scope '{config['default_scope']}' checks and logs every egress")]
    resources = kit.resources
    allowed = resources.get("class_allow_list")
    if allowed != SITE_CLASSES:
        checks.append(Check("job components", "fail",
                            f"local/resources.json class_allow_list is {allowed!r}: jobs could run components other "
                            "than the SDK's site runtime; re-run 'ai4hi provision'"))
    else:
        checks.append(Check("job components", "ok", "jobs may run only the SDK's site runtime and egress guard"))
    streaming = resources.get("allow_log_streaming", True) or LOG_STREAMER in json.dumps(resources)
    checks.append(Check("log streaming", "fail" if streaming else "ok",
                        "NVFlare log streaming is on: job error logs would reach the server outside the egress log"
                        if streaming else "off: no job log leaves the site"))
    return checks


def site_settings(kit: Kit) -> dict[str, Any]:
    """The site admin's ``<kit>/ai4hi/site.yaml`` ({} if absent); :class:`UserError` (one line,
    naming the file) if it is not UTF-8 YAML mapping with a text ``data_dir``."""
    import yaml

    path = kit.path / SITE_SETTINGS
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping such as 'data_dir: /path/to/dicom', got {type(data).__name__}")
    if data.get("data_dir") is not None and not isinstance(data["data_dir"], str):
        raise UserError(f"{path}: data_dir must be a folder path (text), got {data['data_dir']!r}")
    return data


def data_folder_the_site_reads(kit: Kit) -> tuple[Path | None, str]:
    """The folder the site will read and why, as :func:`ai4hi_sdk.site.runtime.resolve_site_dir`
    decides it: ``AI4HI_SITE_DATA_DIR``, then ``AI4HI_DATA_ROOT/<site>`` (this shell's environment,
    which ``ai4hi site start`` passes on), then ``data_dir`` in ``ai4hi/site.yaml``. ``(None, ...)``
    if none is set (the site then falls back to the job's ``--data-root``)."""
    from ai4hi_sdk.site.runtime import DATA_ROOT_ENV, SITE_DATA_DIR_ENV

    if os.environ.get(SITE_DATA_DIR_ENV):
        return Path(os.environ[SITE_DATA_DIR_ENV]), f"{SITE_DATA_DIR_ENV} in the environment"
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]) / kit.name, f"{DATA_ROOT_ENV} in the environment, plus the site name"
    value = site_settings(kit).get("data_dir")
    if value:
        return Path(value), f"data_dir in {kit.path / SITE_SETTINGS}"
    return None, "no AI4HI_SITE_DATA_DIR / AI4HI_DATA_ROOT and no data_dir in ai4hi/site.yaml"


def check_data_folder(kit: Kit, data_dir: Path | None) -> tuple[list[Check], Path | None]:
    """Whether the folder the site will read exists, and whether ``--data`` (``data_dir``) is it.
    Returns the checks and the folder to scan (``--data`` if given, else the site's own)."""
    reads, how = data_folder_the_site_reads(kit)
    if reads is None:
        if data_dir is None:
            return [Check("data folder", "fail", f"no --data given and {how}")], None
        return [Check("data folder", "warn",
                      f"{how}: the site will read the data root a job is submitted with, not necessarily "
                      f"'{data_dir}'; set data_dir in {kit.path / SITE_SETTINGS}")], data_dir
    checks = []
    if not reads.is_dir():
        checks.append(Check("data folder", "fail",
                            f"the site will read '{reads}' ({how}), which is not a folder"
                            + (f"; '{data_dir}' (--data) is not what it reads" if data_dir is not None
                               and data_dir.resolve() != reads.resolve() else "")))
    elif data_dir is not None and data_dir.resolve() != reads.resolve():
        checks.append(Check("data folder", "warn",
                            f"the site reads '{reads}' ({how}), not '{data_dir}' (--data): the checks below are of "
                            f"'{data_dir}'; edit {kit.path / SITE_SETTINGS} if '{data_dir}' is the right folder"))
    else:
        checks.append(Check("data folder", "ok", f"the site reads '{reads}' ({how})"))
    return checks, data_dir if data_dir is not None else reads


def check_data(kit: Kit, data_dir: Path) -> tuple[list[Check], dict[str, Any] | None]:
    """DICOM scan summary of the site's data folder (``<dir>/dicom`` if present, else ``<dir>``)."""
    from ai4hi_sdk.data.scan import scan_directory

    checks = []
    if not data_dir.is_dir():
        return [Check("data folder", "fail", f"'{data_dir}' is not a folder")], None
    root = data_dir / "dicom" if (data_dir / "dicom").is_dir() else data_dir
    report = scan_directory(root)
    summary = report.summary()
    if report.files_read == 0:
        checks.append(Check("DICOM", "fail", f"no readable DICOM under '{root}' ({report.files_skipped} files skipped: "
                                             f"{report.skipped_by_reason or 'none found'})"))
    else:
        skipped = f", {report.files_skipped} skipped {report.skipped_by_reason}" if report.files_skipped else ""
        checks.append(Check("DICOM", "ok", f"{report.files_read} files, {summary['studies']} studies, "
                                           f"{summary['series']} series, modalities {summary['modalities']}{skipped}"))
    labels = data_dir / "labels.csv"
    checks.append(Check("labels", "ok" if labels.is_file() else "warn",
                        f"{labels}" if labels.is_file() else f"no {labels}: training jobs need labels"))
    return checks, summary


def check_policy(kit: Kit) -> tuple[list[Check], dict[str, Any] | None]:
    """The site privacy policy in force, and the state of its privacy ledger."""
    path = kit.path / SITE_POLICY
    if not path.is_file():
        return [Check("privacy policy", "fail", f"no {path}: a site without a policy refuses to train")], None
    try:
        policy = load_site_policy(path)
    except UserError as err:
        return [Check("privacy policy", "fail", str(err))], None
    checks = [Check("privacy policy", "ok",
                    f"epsilon <= {policy.max_epsilon_per_dataset:g} per dataset, delta {policy.delta:g}, "
                    f"DP {'required' if policy.require_dp else 'optional'}")]
    ledger = kit.path / PRIVACY_LEDGER
    if ledger.is_file():
        check = PrivacyLedger(ledger).verify()
        checks.append(Check("privacy ledger", "ok" if check.ok else "fail",
                            "hash chain verified" if check.ok else f"{ledger}: {check}"))
    return checks, policy.model_dump(mode="json")


def site_readiness(kit: Kit, data_dir: str | Path | None = None, now: datetime | None = None,
                   gpus: int | None = None) -> Readiness:
    """Every check for ``kit`` (a site or the server). ``data_dir`` (``--data``) defaults to the folder
    the site will read; that folder must exist either way (:func:`check_data_folder`)."""
    report = Readiness(kit)
    report.checks += check_certificates(kit, now)
    if kit.kind == "admin":
        return report
    report.checks += check_gpus(kit, available=gpus, how="given") if gpus is not None else check_gpus(kit)
    report.checks += check_nvflare_preflight(kit)
    if kit.kind == "site":
        report.checks += check_site_config(kit)
        report.site_reads = data_folder_the_site_reads(kit)
        checks, folder = check_data_folder(kit, Path(data_dir) if data_dir is not None else None)
        report.checks += checks
        if folder is not None:
            checks, report.data_summary = check_data(kit, folder)
            report.checks += checks
        checks, report.policy = check_policy(kit)
        report.checks += checks
    return report

"""What runs inside an NVFlare site for an ai4hi job: build the trainer, serve tasks.

The job ships a two-line script (``ai4hi_site_main.py``) that calls :func:`main` with the job's
arguments. Where the site's data lives is the site's decision: ``AI4HI_SITE_DATA_DIR`` (this
site's folder) or ``AI4HI_DATA_ROOT`` (a folder holding one sub-folder per site) set in the site's
environment, or ``data_dir`` in the site's ``ai4hi/site.yaml``, win over the ``--data-root`` the
job was submitted with.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Sequence

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.site_paths import configured_data_dir, site_workspace

SITE_DATA_DIR_ENV = "AI4HI_SITE_DATA_DIR"
DATA_ROOT_ENV = "AI4HI_DATA_ROOT"


#: the job spec travels inside the job (custom/ folder of every app) as readable JSON
SPEC_FILE = "ai4hi_job_spec.json"


def write_spec_file(spec: JobSpec, folder: str | Path) -> Path:
    """Write ``spec`` as ``folder/ai4hi_job_spec.json`` and return the path."""
    path = Path(folder) / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True))
    return path


def read_spec_file(folder: str | Path) -> JobSpec:
    """Read the spec shipped in a job app's ``folder``; ``code`` files resolve against it."""
    data = json.loads((Path(folder) / SPEC_FILE).read_text())
    return JobSpec.model_validate(data).model_copy(update={"base_dir": str(folder)})


def resolve_site_dir(site_name: str, job_data_root: str | None, workspace: str | Path | None = None) -> Path:
    """The site's data folder: the site's environment (``AI4HI_SITE_DATA_DIR``, then
    ``AI4HI_DATA_ROOT``), then its ``ai4hi/site.yaml``, then the job's ``--data-root``."""
    if os.environ.get(SITE_DATA_DIR_ENV):
        return Path(os.environ[SITE_DATA_DIR_ENV])
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]) / site_name
    configured = configured_data_dir(workspace) if workspace is not None else None
    if configured is not None:
        return configured
    root = job_data_root
    if not root:
        raise SystemExit(f"site {site_name}: no data folder; set {SITE_DATA_DIR_ENV} or {DATA_ROOT_ENV}")
    return Path(root) / site_name


def main(custom_dir: str | Path, argv: Sequence[str] | None = None) -> None:
    """Run the site side of a job; ``custom_dir`` is the job app's custom folder (holds the spec)."""
    import nvflare.client as flare

    parser = argparse.ArgumentParser(prog="ai4hi_site_main")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    spec = read_spec_file(Path(custom_dir))
    flare.init()
    site_name = flare.get_site_name()
    trainer_cls = spec.trainer_class()
    workspace = site_workspace(site_name, Path.cwd())
    trainer = trainer_cls(spec, site_dir=resolve_site_dir(site_name, args.data_root, workspace), site_name=site_name,
                          device=args.device, site_workspace=workspace, job_id=flare.get_job_id())
    trainer.run_federated()

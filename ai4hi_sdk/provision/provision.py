"""Consortium -> NVFlare ``project.yml`` -> ``nvflare provision`` -> kits overlaid with our site config.

The certificates, start scripts and kits come from NVFlare's own provisioning tool (run as a
child process); this module only writes its input and overlays each kit's ``local/`` folder:

* ``resources.json``: NVFlare's defaults, with the SDK's component classes added to the class
  allow list (NVFlare enforces it), GPU count per site, and the server's job and snapshot storage
  moved inside the kit (never ``/tmp/nvflare``);
* ``privacy.json`` (sites): one default scope whose task-result filter is the SDK's egress log,
  so every payload leaving the site is logged whatever job runs (site-enforced filters run
  before the job's own);
* ``authorization.json``: NVFlare's default policy, made active;
* ``<kit>/ai4hi/site_policy.yaml``: the consortium's default privacy policy — written only if the
  site has none, so re-provisioning never overwrites a site's policy or its ledgers;
* ``<kit>/ai4hi/site.yaml``: the site's settings (``data_dir``), also written only if absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ai4hi_sdk.config.consortium import ConsortiumSpec
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.privacy.dp.policy import SITE_POLICY
from ai4hi_sdk.site_paths import SITE_SETTINGS

#: SDK classes sites and server must be allowed to instantiate (NVFlare's class allow list)
SDK_CLASSES = [
    "ai4hi_sdk.jobs.components.controller.Ai4hiFedAvg",
    "ai4hi_sdk.jobs.components.payload_log.EgressLogFilter",
    "ai4hi_sdk.jobs.components.payload_log.ReceiptLogFilter",
]
EGRESS_FILTER = "ai4hi_sdk.jobs.components.payload_log.EgressLogFilter"


def project_yml(consortium: ConsortiumSpec) -> dict[str, Any]:
    """NVFlare project description (API version 3) for ``consortium``."""
    server = consortium.server
    participants: list[dict[str, Any]] = [{
        "name": server.host, "type": "server", "org": server.org,
        "fed_learn_port": server.fed_learn_port, "admin_port": server.admin_port,
    }]
    participants += [{"name": s.name, "type": "client", "org": s.org} for s in consortium.sites]
    nvflare_role = {"lead": "lead", "site_admin": "org_admin", "project_admin": "project_admin", "member": "member"}
    participants += [{"name": p.email, "type": "admin", "org": p.org, "role": nvflare_role[p.role]}
                     for p in consortium.people]
    return {
        "api_version": 3,
        "name": consortium.name,
        "description": f"ai4hi consortium {consortium.name}",
        "participants": participants,
        "builders": [
            {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder",
             "args": {"template_file": ["master_template.yml"]}},
            {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
            {"path": "nvflare.lighter.impl.cert.CertBuilder"},
            {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
        ],
    }


def run_nvflare_provision(project_file: Path, workspace: Path) -> Path:
    """Run ``nvflare provision``; return the folder holding one kit per participant."""
    # --force: non-interactive re-provisioning (NVFlare then writes a new prod_NN folder)
    cmd = [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(project_file), "-w", str(workspace), "--force"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(workspace.parent), timeout=300)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise UserError("nvflare provision failed:\n  " + "\n  ".join(tail))
    project_dir = workspace / yaml.safe_load(project_file.read_text())["name"]
    prods = sorted(project_dir.glob("prod_*"), key=lambda p: int(p.name.split("_")[1]))
    if not prods:
        raise UserError(f"nvflare provision wrote no kits under {project_dir}")
    return prods[-1]


def _load_default(local: Path, name: str) -> dict[str, Any]:
    default = local / f"{name}.default"
    return json.loads(default.read_text()) if default.exists() else {}


def _allow_sdk_classes(resources: dict[str, Any]) -> None:
    allow = resources.setdefault("class_allow_list", [])
    allow.extend(c for c in SDK_CLASSES if c not in allow)


def overlay_site(kit: Path, site_gpus: int, policy: dict[str, Any], data_root: str) -> dict[str, str]:
    """Write the site's ``local/`` config and, if absent, its privacy policy and site settings
    (``ai4hi/site.yaml``: where the site's data lives). Returns what was done."""
    local, done = kit / "local", {}
    settings = kit / SITE_SETTINGS
    if not settings.exists():
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(yaml.safe_dump({"data_dir": data_root}))
    resources = _load_default(local, "resources.json")
    _allow_sdk_classes(resources)
    for component in resources.get("components", []):
        if component.get("id") == "resource_manager":
            component.setdefault("args", {})["num_of_gpus"] = site_gpus
    (local / "resources.json").write_text(json.dumps(resources, indent=2))
    privacy = {"scopes": [{"name": "ai4hi", "task_result_filters": [{"path": EGRESS_FILTER, "args": {}}]}],
               "default_scope": "ai4hi"}
    (local / "privacy.json").write_text(json.dumps(privacy, indent=2))
    authorization = local / "authorization.json.default"
    if authorization.exists():
        shutil.copyfile(authorization, local / "authorization.json")
    target = kit / SITE_POLICY
    if target.exists():
        done["policy"] = f"kept the site's own {target}"
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(policy, sort_keys=False))
        done["policy"] = f"wrote {target}"
    return done


def overlay_server(kit: Path) -> None:
    """Server ``local/resources.json``: SDK classes allowed, job and snapshot storage in the kit."""
    local = kit / "local"
    resources = _load_default(local, "resources.json")
    _allow_sdk_classes(resources)
    storage = kit / "storage"
    snapshot = resources.get("snapshot_persistor", {}).get("args", {}).get("storage", {}).get("args")
    if snapshot is not None:
        snapshot["root_dir"] = str(storage / "snapshot-storage")
    for component in resources.get("components", []):
        if component.get("id") == "job_manager":
            component.setdefault("args", {})["uri_root"] = str(storage / "jobs-storage")
    (local / "resources.json").write_text(json.dumps(resources, indent=2))
    authorization = local / "authorization.json.default"
    if authorization.exists():
        shutil.copyfile(authorization, local / "authorization.json")


def provision(consortium: ConsortiumSpec, out: str | Path) -> dict[str, Any]:
    """Provision ``consortium`` into ``out``; returns where every kit is and what was overlaid.

    Re-provisioning into the same ``out`` keeps each site's ``ai4hi/`` state (policy, ledgers):
    NVFlare writes a new ``prod_NN`` folder and the previous kit's ``ai4hi/`` folder is carried over.
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    project_file = out / "project.yml"
    project_file.write_text(yaml.safe_dump(project_yml(consortium), sort_keys=False))
    previous = _latest_prod(out / consortium.name)
    prod = run_nvflare_provision(project_file, out)
    policy = consortium.default_privacy_policy.model_dump(mode="json")
    kits: dict[str, Any] = {"server": str(prod / consortium.server.host), "sites": {}, "admins": {}}
    overlay_server(prod / consortium.server.host)
    for site in consortium.sites:
        kit = prod / site.name
        if previous is not None and (previous / site.name / "ai4hi").is_dir() and previous != prod:
            shutil.copytree(previous / site.name / "ai4hi", kit / "ai4hi", dirs_exist_ok=True)
        kits["sites"][site.name] = {"kit": str(kit), **overlay_site(kit, site.gpus, policy, site.data_root)}
    for person in consortium.people:
        kits["admins"][person.email] = str(prod / person.email)
    (out / "ai4hi_kits.json").write_text(json.dumps(kits, indent=2))
    return kits


def _latest_prod(project_dir: Path) -> Path | None:
    prods = sorted(project_dir.glob("prod_*"), key=lambda p: int(p.name.split("_")[1])) if project_dir.exists() else []
    return prods[-1] if prods else None

"""Consortium -> NVFlare ``project.yml`` -> ``nvflare provision`` -> kits overlaid with our site config.

The certificates, start scripts and kits come from NVFlare's own provisioning tool (run as a
child process); this module only writes its input and overlays each kit's ``local/`` folder:

* ``resources.json``: NVFlare's defaults with, at a **site**, a class allow list of exactly the
  SDK's site runtime classes (NVFlare refuses any other component a job names: a job cannot bring
  its own executor, filter or log streamer), site log streaming switched off (NVFlare's
  ``SiteLogStreamer`` would upload each job's error log to the server, outside the egress log),
  and the GPU count; at the **server**, the SDK's server classes added to NVFlare's list and job
  and snapshot storage moved inside the kit (never ``/tmp/nvflare``);
* ``privacy.json`` (sites): one default scope whose task-result filter is the SDK's egress guard,
  so every payload leaving the site is checked against the site's policy and ledger and logged,
  whatever job runs;
* ``authorization.json``: NVFlare's default policy, made active; at sites nobody (lead and project
  admin included) has the ``byoc`` right: custom code reaches a site only as a hashed bundle its
  own policy allows (``allowed_code_sha256``), never as NVFlare custom code;
* ``<kit>/ai4hi/site_policy.yaml``: the consortium's default privacy policy — written only if the
  site has none, so re-provisioning never overwrites a site's policy or its ledgers;
* ``<kit>/ai4hi/site.yaml``: the site's settings (``data_dir``), also written only if absent (a
  kept setting that differs from the consortium file is reported);
* ``<kit>/ai4hi/consortium.json``: the consortium's site list and server, for the site's own checks
  (secure aggregation accepts keys only from these sites: :mod:`ai4hi_sdk.site.secagg_client`).

Every private key the tool wrote (kits' ``*.key``, the lead's ``state/cert.json`` holding the root
CA's key) is made readable by its owner only (0600).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ai4hi_sdk.config.consortium import ConsortiumSpec
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.config.site_policy import SITE_POLICY
from ai4hi_sdk.site_paths import CONSORTIUM_LIST, SITE_SETTINGS

#: the only components a job may run at a site (NVFlare's class allow list; nothing else)
SITE_CLASSES = [
    "ai4hi_sdk.site.executor.Ai4hiSiteExecutor",
    "ai4hi_sdk.site.egress_guard.Ai4hiEgressGuard",
]
#: SDK classes the server must be allowed to instantiate (added to NVFlare's server list)
SERVER_CLASSES = [
    "ai4hi_sdk.jobs.components.controller.Ai4hiFedAvg",
    "ai4hi_sdk.jobs.components.validation_controller.Ai4hiValidationController",
    "ai4hi_sdk.jobs.components.payload_log.ReceiptLogFilter",
]
EGRESS_FILTER = "ai4hi_sdk.site.egress_guard.Ai4hiEgressGuard"
CONSORTIUM_FILE = CONSORTIUM_LIST
LOG_STREAMER = "nvflare.app_common.logging.site_log_streamer.SiteLogStreamer"


def project_yml(consortium: ConsortiumSpec) -> dict[str, Any]:
    """NVFlare project description (API version 3) for ``consortium``."""
    server = consortium.server
    participants: list[dict[str, Any]] = [{
        "name": server.host, "type": "server", "org": server.org,
        "fed_learn_port": server.fed_learn_port, "admin_port": server.admin_port,
    }]
    # no site log streaming: NVFlare would upload each job's error log to the server
    participants += [{"name": s.name, "type": "client", "org": s.org, "allow_log_streaming": False}
                     for s in consortium.sites]
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


def _allow_server_classes(resources: dict[str, Any]) -> None:
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    allow = resources.setdefault("class_allow_list", list(DEFAULT_CLASS_ALLOW_LIST))
    allow.extend(c for c in SERVER_CLASSES if c not in allow)


def site_authorization(default: dict[str, Any]) -> dict[str, Any]:
    """NVFlare's default policy with the ``byoc`` right removed for every role at a site (and the
    project admin no longer "any": the same rights as the lead, without custom code)."""
    policy = json.loads(json.dumps(default))
    permissions = policy.setdefault("permissions", {})
    lead = dict(permissions.get("lead") or {})
    if permissions.get("project_admin") == "any":
        permissions["project_admin"] = {**lead, "operate": "any", "shell_commands": "none"}
    for role, rights in permissions.items():
        if isinstance(rights, dict):
            rights["byoc"] = "none"
    return policy


def overlay_site(kit: Path, site_gpus: int, policy: dict[str, Any], data_root: str,
                 consortium: dict[str, Any] | None = None) -> dict[str, str]:
    """Write the site's ``local/`` config and, if absent, its privacy policy and site settings
    (``ai4hi/site.yaml``: where the site's data lives). Returns what was done."""
    local, done = kit / "local", {}
    settings = kit / SITE_SETTINGS
    if not settings.exists():
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(yaml.safe_dump({"data_dir": data_root}))
    else:
        kept = (yaml.safe_load(settings.read_text()) or {}).get("data_dir")
        if kept != data_root:
            done["kept"] = f"kept the site's data_dir {kept} (the consortium file says {data_root})"
    resources = _load_default(local, "resources.json")
    resources["class_allow_list"] = list(SITE_CLASSES)
    resources["allow_log_streaming"] = False
    resources["components"] = [c for c in resources.get("components", []) if c.get("path") != LOG_STREAMER]
    for component in resources["components"]:
        if component.get("id") == "resource_manager":
            component.setdefault("args", {})["num_of_gpus"] = site_gpus
    (local / "resources.json").write_text(json.dumps(resources, indent=2))
    privacy = {"scopes": [{"name": "ai4hi", "task_result_filters": [{"path": EGRESS_FILTER, "args": {}}]}],
               "default_scope": "ai4hi"}
    (local / "privacy.json").write_text(json.dumps(privacy, indent=2))
    authorization = local / "authorization.json.default"
    if authorization.exists():
        default = json.loads(authorization.read_text())
        (local / "authorization.json").write_text(json.dumps(site_authorization(default), indent=2))
    if consortium is not None:
        (kit / CONSORTIUM_FILE).write_text(json.dumps(consortium, indent=2, sort_keys=True))
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
    _allow_server_classes(resources)
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
    members = {"consortium": consortium.name, "server": consortium.server.host,
               "sites": sorted(s.name for s in consortium.sites)}
    for site in consortium.sites:
        kit = prod / site.name
        if previous is not None and (previous / site.name / "ai4hi").is_dir() and previous != prod:
            shutil.copytree(previous / site.name / "ai4hi", kit / "ai4hi", dirs_exist_ok=True)
        kits["sites"][site.name] = {"kit": str(kit), "admin": site.admin,
                                    **overlay_site(kit, site.gpus, policy, site.data_root, members)}
    for person in consortium.people:
        kits["admins"][person.email] = str(prod / person.email)
    kits["lead_only"] = str(out / consortium.name / "state")
    protected = restrict_private_keys(out)
    kits["private_keys"] = len(protected)
    (out / "ai4hi_kits.json").write_text(json.dumps(kits, indent=2))
    return kits


def restrict_private_keys(out: Path) -> list[Path]:
    """Make every private key file under ``out`` owner-only (0600): kits' ``*.key`` and NVFlare's
    ``state/cert.json`` (it holds the root CA's and every participant's private key)."""
    done = []
    for path in [*out.rglob("*.key"), *out.rglob("state/cert.json"), *out.rglob("*.pfx")]:
        if path.is_file():
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
            done.append(path)
    return done


def _latest_prod(project_dir: Path) -> Path | None:
    prods = sorted(project_dir.glob("prod_*"), key=lambda p: int(p.name.split("_")[1])) if project_dir.exists() else []
    return prods[-1] if prods else None

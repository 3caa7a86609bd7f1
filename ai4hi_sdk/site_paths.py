"""Where a site keeps its own state (policy, privacy budget, ledger, egress log).

A site's state lives in ``<site workspace>/ai4hi/``. The site workspace is the NVFlare site's
workspace root (its kit folder in a real deployment) unless ``AI4HI_SITE_WORKSPACE_ROOT`` is set,
in which case it is ``$AI4HI_SITE_WORKSPACE_ROOT/<site name>`` — the simulator runner uses this so
that site state outlives one simulated run, as it does at a real site.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SITE_WORKSPACE_ROOT_ENV = "AI4HI_SITE_WORKSPACE_ROOT"
DATASET_ID_ENV = "AI4HI_DATASET_ID"
STATE_DIR = "ai4hi"
#: the site admin's settings file in the site workspace (``data_dir: /path/to/dicom``)
SITE_SETTINGS = Path(STATE_DIR) / "site.yaml"
#: the consortium's site list in a site's kit (written by ``ai4hi provision``; by the simulator runner
#: for simulated sites): ``{"consortium": name, "server": host, "sites": [names]}``
CONSORTIUM_LIST = Path(STATE_DIR) / "consortium.json"


def site_workspace(site_name: str, default: str | Path) -> Path:
    """The site's workspace: ``$AI4HI_SITE_WORKSPACE_ROOT/<site>`` if set, else ``default``."""
    root = os.environ.get(SITE_WORKSPACE_ROOT_ENV)
    return Path(root) / site_name if root else Path(default)


def dataset_id_for(data_dir: str | Path) -> str:
    """Identity of a site's dataset for privacy accounting: ``$AI4HI_DATASET_ID`` if the site sets
    it, else the folder name plus a hash of its absolute path (stable across jobs, so epsilon
    composes over every job trained on the same folder)."""
    if os.environ.get(DATASET_ID_ENV):
        return os.environ[DATASET_ID_ENV]
    path = Path(data_dir).resolve()
    return f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"


def configured_data_dir(workspace: str | Path) -> Path | None:
    """``data_dir`` from the site's ``ai4hi/site.yaml``, if the site has one."""
    import yaml

    path = Path(workspace) / SITE_SETTINGS
    if not path.is_file():
        return None
    value = (yaml.safe_load(path.read_text()) or {}).get("data_dir")
    return Path(value) if value else None

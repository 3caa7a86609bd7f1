"""The site's store of base checkpoints (backbones), by sha256: ``<site workspace>/ai4hi/backbones/<sha256>/``.

A job that adapts a backbone names it only by the sha256 of its ``backbone.safetensors``
(``model.checkpoint_sha256``); the weights never travel with the job or with a round. Each site
holds its own copy, installed once by the site admin (``ai4hi site add-backbone DIR``; the
simulator runner installs it at simulated sites that lack it) and reused by every job on that
backbone: fine-tuning, validation, monitoring, retraining. Before round 0 the site runtime hashes
its copy and refuses the job, with the reason, when it does not hold the backbone or the bytes
differ (:func:`locate_backbone`). Nothing here imports torch.

Why a site-local store rather than job data: a backbone is hundreds of megabytes (ViT-B/16: 330 MB)
that every job would carry again (each retraining and validation job of the continuous loop), and
a site admin should see, with its provenance record (source, licence, card), which backbone runs
on the site's data before any job uses it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from ai4hi_sdk.audit.file_digest import sha256_file
from ai4hi_sdk.errors import RoundRefused, UserError

BACKBONE_STORE = Path("ai4hi") / "backbones"
BACKBONE_FILE = "backbone.safetensors"  # the names of ai4hi_sdk.foundation.checkpoint (kept torch-free here)
PROVENANCE_FILE = "provenance.json"
CARD_FILE = "BACKBONE_CARD.md"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")



def backbone_folder(source: str | Path) -> Path:
    """The folder of a backbone given as the folder or its ``backbone.safetensors``."""
    source = Path(source)
    return source.parent if source.name == BACKBONE_FILE else source


def read_backbone_sha256(source: str | Path) -> str:
    """sha256 of a backbone folder's weights, checked against its ``provenance.json``.

    Raises:
        UserError: missing files, unreadable record, or weights whose bytes differ from the record.
    """
    folder = backbone_folder(source)
    weights, record = folder / BACKBONE_FILE, folder / PROVENANCE_FILE
    if not weights.is_file():
        raise UserError(f"{folder}: no {BACKBONE_FILE} (a backbone folder from 'ai4hi model import' or a "
                        "pretraining job's result/backbone)")
    try:
        recorded = str(json.loads(record.read_text())["sha256"]).lower()
    except FileNotFoundError:
        raise UserError(f"{folder}: no {PROVENANCE_FILE}: import the checkpoint with 'ai4hi model import' first") \
            from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{record}: unreadable provenance record ({err})") from None
    actual = sha256_file(weights)
    if actual != recorded:
        raise UserError(f"{weights} has sha256 {actual}, but its provenance record says {recorded}")
    return actual


def store_dir(workspace: str | Path, sha256: str) -> Path:
    return Path(workspace) / BACKBONE_STORE / sha256


def is_installed(workspace: str | Path, sha256: str) -> bool:
    """Whether the site holds files under ``sha256`` (whatever their bytes: see :func:`locate_backbone`)."""
    return (store_dir(workspace, sha256) / BACKBONE_FILE).is_file()


@dataclass(frozen=True)
class InstalledBackbone:
    sha256: str
    folder: Path
    action: str  # "installed", "kept" (already there, bytes verified) or "replaced" (a damaged copy)


def install_backbone(source: str | Path, workspace: str | Path, *,
                     expected_sha256: str | None = None) -> InstalledBackbone:
    """Copy a backbone folder into the site's store under its sha256 (verified first).

    An installed copy with the right bytes is kept; a damaged one is replaced. ``expected_sha256``
    (e.g. from the job) must match, else nothing is installed.

    Raises:
        UserError: the folder is not a verifiable backbone, or its sha256 is not ``expected_sha256``.
    """
    folder = backbone_folder(source)
    sha = read_backbone_sha256(folder)
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise UserError(f"{folder}: backbone sha256 {sha} is not the expected {expected_sha256}")
    target = store_dir(workspace, sha)
    action = "installed"
    if is_installed(workspace, sha):
        if sha256_file(target / BACKBONE_FILE) == sha:
            return InstalledBackbone(sha, target, "kept")
        action = "replaced"
    staging = target.parent / f".{sha}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    try:
        for name in (BACKBONE_FILE, PROVENANCE_FILE, CARD_FILE):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, staging / name)
        if sha256_file(staging / BACKBONE_FILE) != sha:
            raise UserError(f"{folder}: the backbone changed while it was copied; nothing was installed")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return InstalledBackbone(sha, target, action)


def locate_backbone(workspace: str | Path | None, sha256: object) -> Path:
    """This site's copy of the backbone the job names, after hashing its bytes.

    Raises:
        RoundRefused: malformed sha256, no site workspace, backbone not installed, or a copy
            whose bytes differ (nothing is trained then).
    """
    if not isinstance(sha256, str) or not _SHA256.match(sha256.lower()):
        raise RoundRefused(f"base checkpoint: the job's checkpoint_sha256 {sha256!r} is not a sha256 hex digest")
    sha256 = sha256.lower()
    if workspace is None:
        raise RoundRefused("base checkpoint: this site has no workspace to hold backbones in")
    folder = store_dir(workspace, sha256)
    weights = folder / BACKBONE_FILE
    if not weights.is_file():
        raise RoundRefused(f"base checkpoint: this site does not hold the backbone with sha256 {sha256}; the site "
                           f"admin installs it with `ai4hi site add-backbone BACKBONE_DIR` (it goes to {folder})")
    actual = sha256_file(weights)
    if actual != sha256:
        raise RoundRefused(f"base checkpoint: this site's copy {weights} has sha256 {actual}, but the job expects "
                           f"{sha256}; nothing was trained (the site admin reinstalls it with `ai4hi site "
                           "add-backbone`)")
    return folder


def installed_backbones(workspace: str | Path) -> list[dict]:
    """The site's backbones: ``{"sha256", "folder", "arch", "kind", "source", "licence"}`` each."""
    root = Path(workspace) / BACKBONE_STORE
    out = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir() and _SHA256.match(p.name)):
        try:
            record = json.loads((folder / PROVENANCE_FILE).read_text())
        except (OSError, ValueError):
            record = {}
        out.append({"sha256": folder.name, "folder": str(folder), "arch": record.get("arch"),
                    "kind": record.get("kind"), "source": record.get("source"), "licence": record.get("licence")})
    return out

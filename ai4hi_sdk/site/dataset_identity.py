"""Which patients' data a site trains on: the identity privacy budgets are booked against.

A dataset is identified by the studies it holds, not by the folder that holds them: the dataset
id is a salted hash over the sorted StudyInstanceUIDs of every DICOM file under the site's data
folder. So the same studies copied to another folder or re-mounted elsewhere keep their id and
their spend. The salt is a secret of the site (``<site workspace>/ai4hi/dataset_salt``, made once,
mode 0600), so ids and study keys say nothing to anyone without it.

A dataset that **grows** (new studies added to the folder) gets a new id; the site's registry
(``ai4hi/datasets.json``, salted study keys per dataset id, never leaves the site) finds every
earlier dataset that shares a study with it, and the budget counts their spends against the new
one too (:mod:`ai4hi_sdk.privacy.dp.budget`, ``related``). The unit is the study: DP-SGD protects
one training example, and the SDK's examples are studies; a patient with k studies in one
dataset is protected at k times epsilon (group privacy).

A folder without DICOM files (e.g. a developer's in-memory data) falls back to an id from the
folder's resolved path, and says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ai4hi_sdk.audit.files import file_lock, write_json_atomic

SALT_FILE = Path("ai4hi") / "dataset_salt"
REGISTRY_FILE = Path("ai4hi") / "datasets.json"
#: bytes of a salted study key kept in the registry (collisions are irrelevant at 8 bytes for any site)
_KEY_BYTES = 8


@dataclass(frozen=True)
class DatasetIdentity:
    """A site dataset's identity.

    Attributes:
        dataset_id: ``ds-<16 hex>`` (salted hash of the sorted study keys) or ``path-<16 hex>``.
        study_keys: salted, truncated hashes of the StudyInstanceUIDs (hex), empty for a path id.
        source: how the id was made, for logs and reports.
    """

    dataset_id: str
    study_keys: frozenset[str]
    source: str


def site_salt(workspace: str | Path) -> bytes:
    """The site's secret salt, created (32 random bytes, mode 0600) on first use."""
    path = Path(workspace) / SALT_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_suffix(".lock")):
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(os.urandom(32))
                    handle.flush()
                    os.fsync(handle.fileno())
    salt = path.read_bytes()
    if len(salt) < 16:
        raise ValueError(f"{path} is not a site salt (too short); restore it from backup")
    return salt


def _study_uid(path: Path) -> str | None:
    """StudyInstanceUID of a DICOM Part 10 file (header only), None for anything else."""
    import pydicom

    try:
        with open(path, "rb") as handle:
            preamble = handle.read(132)
        if len(preamble) < 132 or preamble[128:132] != b"DICM":
            return None
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        uid = str(getattr(ds, "StudyInstanceUID", "") or "").strip()
        return uid or None
    except Exception:  # noqa: BLE001 - unreadable files are the scan's business, not identity's
        return None


def study_uids(data_dir: str | Path) -> set[str]:
    """Every StudyInstanceUID under ``data_dir`` (hidden folders skipped)."""
    uids: set[str] = set()
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            uid = _study_uid(Path(root) / name)
            if uid:
                uids.add(uid)
    return uids


def identify_dataset(data_dir: str | Path, salt: bytes) -> DatasetIdentity:
    """The identity of the data under ``data_dir`` (see the module docstring)."""
    uids = study_uids(data_dir)
    if not uids:
        resolved = str(Path(data_dir).resolve())
        digest = hmac.new(salt, resolved.encode(), hashlib.sha256).hexdigest()[:16]
        return DatasetIdentity(f"path-{digest}", frozenset(), "folder path (no DICOM studies found)")
    keys = frozenset(hmac.new(salt, uid.encode(), hashlib.sha256).hexdigest()[: 2 * _KEY_BYTES] for uid in uids)
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    return DatasetIdentity(f"ds-{digest}", keys, f"{len(keys)} DICOM studies")


class DatasetRegistry:
    """The site's record of every dataset identity it has trained on (salted study keys)."""

    def __init__(self, workspace: str | Path):
        self.path = Path(workspace) / REGISTRY_FILE

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return dict(data.get("datasets", {}))
        except (OSError, ValueError, AttributeError) as err:
            raise ValueError(f"dataset registry {self.path} is unreadable ({err}); restore it from backup") from None

    def related(self, identity: DatasetIdentity) -> list[str]:
        """Ids of recorded datasets (other than this one) sharing at least one study with it."""
        if not identity.study_keys:
            return []
        return sorted(ds for ds, entry in self._read().items()
                      if ds != identity.dataset_id and identity.study_keys.intersection(entry.get("studies", ())))

    def register(self, identity: DatasetIdentity) -> None:
        """Record ``identity`` (idempotent)."""
        with file_lock(self.path.with_suffix(".lock")):
            data = self._read()
            if identity.dataset_id in data:
                return
            data[identity.dataset_id] = {"studies": sorted(identity.study_keys), "source": identity.source,
                                         "first_seen": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            write_json_atomic(self.path, {"format": 1, "datasets": data})

"""The SHA-256 of a file's bytes, read in chunks (checkpoints and backbones are hundreds of MiB).

One function for every place that pins a file by hash: imported checkpoints, exported backbones, a
site's backbone store. Imports nothing heavy (the site's backbone store runs without torch)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20  # 1 MiB


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 (64 lower-case hex characters) of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()

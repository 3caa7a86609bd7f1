"""A job's custom code (its ``code:`` files) as a hashed bundle the site decides on.

The lead's tools pack the files into the job as data (base64 text inside the site executor's
arguments), never into NVFlare's ``custom/`` folder: NVFlare then sees a job made only of classes
the site installed, which its class allow list enforces, and no custom code runs unless the site
runtime itself installs the bundle, which it does only when the site policy allows the bundle's
SHA-256 (``allowed_code_sha256``).

The SHA-256 of a bundle covers every file's relative path and bytes, so the hash a site admin
allows is the hash of exactly what runs. ``ai4hi job export`` and ``ai4hi job simulate`` print it.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path, PurePosixPath
from typing import Mapping

from ai4hi_sdk.errors import UserError

#: relative path (POSIX) -> base64 of the file's bytes
CodeFiles = Mapping[str, str]


def pack_code(base_dir: str | Path, entries: list[str]) -> dict[str, str]:
    """Read the ``code:`` entries (paths relative to the job spec's folder) into a bundle.

    Raises :class:`UserError` for a missing file, a path outside the folder, or a symlink whose
    target leaves the job's folder (it would ship, e.g., ``/etc/passwd`` or a private key)."""
    base = Path(base_dir).resolve()
    files: dict[str, str] = {}
    for entry in entries:
        relative = PurePosixPath(Path(entry).as_posix())
        if relative.is_absolute() or ".." in relative.parts:
            raise UserError(f"code entry '{entry}' must be a path inside the job spec's folder")
        path = base / Path(*relative.parts)
        resolved = path.resolve()
        if not resolved.is_relative_to(base):
            raise UserError(f"code entry '{entry}' resolves to {resolved}, outside the job's folder {base} "
                            "(a symlink?); copy the file into the job's folder instead")
        if not resolved.is_file():
            raise UserError(f"code entry '{entry}' is not a file ({path})")
        files[str(relative)] = base64.b64encode(resolved.read_bytes()).decode("ascii")
    return files


def bundle_sha256(files: CodeFiles) -> str:
    """SHA-256 over every file's path and bytes, in path order (the hash a site allows)."""
    digest = hashlib.sha256(b"ai4hi-code-bundle-v1\n")
    for name in sorted(files):
        content = base64.b64decode(files[name], validate=True)
        digest.update(f"{name}\n{len(content)}\n".encode())
        digest.update(content)
    return digest.hexdigest()


def install_code(files: CodeFiles, target: str | Path) -> list[Path]:
    """Write the bundle under ``target`` (created); returns the folders to put on ``sys.path``
    (each file's folder, as the lead's tools do). Paths are re-checked: nothing is written
    outside ``target``."""
    target = Path(target).resolve()
    folders: list[Path] = []
    for name, data in sorted(files.items()):
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"bad path in code bundle: {name!r}")
        path = target.joinpath(*relative.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data, validate=True))
        if path.parent not in folders:
            folders.append(path.parent)
    return folders

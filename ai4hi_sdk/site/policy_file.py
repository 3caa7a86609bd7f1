"""Edits a site admin makes to their own policy file with the CLI (comments and layout kept)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.config.site_policy import SITE_POLICY, load_site_policy

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
KEY = "allowed_code_sha256"


def allow_code(workspace: str | Path, digest: str, *, revoke: bool = False) -> list[str]:
    """Add (or with ``revoke`` remove) ``digest`` in ``allowed_code_sha256`` of a site's policy
    file (``workspace`` is the site's kit or workspace, or the policy file itself); returns the
    list now in force. The file is re-validated; on any problem it is left as it was and
    :class:`UserError` says why."""
    digest = digest.strip().lower()
    if not _SHA256.match(digest):
        raise UserError(f"'{digest}' is not a SHA-256 hex digest (64 hex characters, as `ai4hi job export` prints)")
    path = Path(workspace) if Path(workspace).is_file() else Path(workspace) / SITE_POLICY
    if not path.is_file():
        raise UserError(f"no site policy at {path}: provision the site or copy site_templates/site_policy.example.yaml")
    original = path.read_text(encoding="utf-8")
    current = list((yaml.safe_load(original) or {}).get(KEY) or [])
    wanted = [d for d in current if d != digest] if revoke else (current if digest in current else [*current, digest])
    if wanted == current:
        return current
    text = _with_list(original, wanted)
    path.write_text(text, encoding="utf-8")
    try:
        policy = load_site_policy(path)
    except UserError:
        path.write_text(original, encoding="utf-8")
        raise
    return list(policy.allowed_code_sha256)


def _with_list(text: str, values: list[str]) -> str:
    """``text`` with the top-level ``allowed_code_sha256`` block replaced by ``values`` (appended
    when absent), other lines untouched."""
    lines = text.splitlines()
    block = [f"{KEY}:" if values else f"{KEY}: []"] + [f"  - {v}" for v in values]
    start = next((i for i, line in enumerate(lines) if re.match(rf"^{KEY}\s*:", line)), None)
    if start is None:
        comment = "# custom code (a job's `code:` bundle) this site runs, by SHA-256 (`ai4hi site allow-code`)"
        return "\n".join([*lines, "", comment, *block]) + "\n"
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t", "-")) or not lines[end].strip()):
        end += 1
    return "\n".join([*lines[:start], *block, *lines[end:]]) + "\n"

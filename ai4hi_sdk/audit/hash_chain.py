"""Append-only JSON-lines log where each entry carries the SHA-256 of the previous one.

Line format (one JSON object per line)::

    {"seq": 0, "prev": "<64 hex zeros>", "record": {...}, "hash": "<sha256 of seq|prev|record>"}

Anyone holding the file can re-compute the chain with :func:`verify_chain`; editing, deleting or
reordering a line breaks it at that line. The log is local to a site and never leaves it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

GENESIS = "0" * 64


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(seq: int, prev: str, record: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical encoding of ``(seq, prev, record)``."""
    return hashlib.sha256(_canonical({"seq": seq, "prev": prev, "record": record})).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    """Result of verifying a chain: ``ok`` and, if not, the 1-based line that broke it and why."""

    ok: bool
    entries: int
    bad_line: int | None = None
    reason: str = ""


class ChainDamaged(ValueError):
    """The chain file cannot be extended: a line is not a chain entry (e.g. half written by a crash
    or a full disk), or the chain does not verify. ``str(err)`` names the file and the line."""


def read_entries(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield raw entries (not verified); raises :class:`ChainDamaged` naming an unreadable line."""
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise ChainDamaged(f"{path}: line {line_no} is not a complete chain entry (half-written "
                                       "by a crash or a full disk?)") from None


def verify_chain(path: str | Path) -> ChainCheck:
    """Re-compute every hash and link; report the first bad line."""
    prev, count = GENESIS, 0
    try:
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    seq, entry_prev, record, digest = entry["seq"], entry["prev"], entry["record"], entry["hash"]
                except (ValueError, KeyError, TypeError):
                    return ChainCheck(False, count, line_no, "line is not a chain entry")
                if seq != count:
                    return ChainCheck(False, count, line_no, f"sequence number {seq}, expected {count}")
                if entry_prev != prev:
                    return ChainCheck(False, count, line_no, "previous-hash link broken (line removed or reordered)")
                if entry_hash(seq, entry_prev, record) != digest:
                    return ChainCheck(False, count, line_no, "content does not match its hash (line edited)")
                prev, count = digest, count + 1
    except FileNotFoundError:
        return ChainCheck(True, 0)
    return ChainCheck(True, count)


class HashChainLog:
    """Appender for one chain file. Safe for one writer process; appends are fsync'ed."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _tail(self) -> tuple[int, str]:
        """``(next seq, hash of the last entry)`` of a chain that verifies; :class:`ChainDamaged`
        otherwise (never append after a damaged line: the new entry would hide the damage)."""
        check = verify_chain(self.path)
        if not check.ok:
            raise ChainDamaged(f"{self.path}: line {check.bad_line}: {check.reason}")
        seq, prev = 0, GENESIS
        if self.path.exists():
            for entry in read_entries(self.path):
                seq, prev = entry["seq"] + 1, entry["hash"]
        return seq, prev

    def head(self) -> tuple[int, str]:
        """``(number of entries, hash of the last one)`` (``(0, GENESIS)`` for no file);
        :class:`ChainDamaged` if the chain does not verify."""
        return self._tail()

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append ``record`` (JSON-able) and return the full entry written.

        Raises :class:`ChainDamaged` (nothing written) when the existing chain does not verify."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        seq, prev = self._tail()
        record = json.loads(_canonical(record))  # normalise (tuples -> lists) so the hash re-computes
        entry = {"seq": seq, "prev": prev, "record": record, "hash": entry_hash(seq, prev, record)}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return entry

    def records(self) -> list[dict[str, Any]]:
        return [entry["record"] for entry in read_entries(self.path)] if self.path.exists() else []

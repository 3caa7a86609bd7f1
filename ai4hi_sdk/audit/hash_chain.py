"""Append-only JSON-lines log where each entry carries the SHA-256 of the previous one.

Line format (one JSON object per line)::

    {"seq": 0, "prev": "<64 hex zeros>", "record": {...}, "hash": "<sha256 of seq|prev|record>"}

Anyone holding the file can re-compute the chain with :func:`verify_chain`; editing, deleting or
reordering a line breaks it at that line. Each hash covers the previous one, so the newest hash (the
*head*) commits to the whole history: an entry count and head recorded elsewhere (an *anchor*) let a
verifier detect a truncated or rewritten log. An unsigned chain shows only that the file is
internally consistent: whoever can write the file can recompute every hash (signed logs:
:mod:`ai4hi_sdk.validation.decision_log`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

GENESIS = "0" * 64


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(seq: int, prev: str, record: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical encoding of ``(seq, prev, record)``."""
    return hashlib.sha256(_canonical({"seq": seq, "prev": prev, "record": record})).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    """Result of verifying a chain: ``ok`` and, if not, the 1-based line that broke it and why.

    ``entries`` counts the entries verified (those before ``bad_line``); ``head`` is the hash of the
    last of them (:data:`GENESIS` for none).
    """

    ok: bool
    entries: int
    bad_line: int | None = None
    reason: str = ""
    head: str = GENESIS


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
                    return ChainCheck(False, count, line_no, "line is not a chain entry", prev)
                if seq != count:
                    return ChainCheck(False, count, line_no, f"sequence number {seq}, expected {count}", prev)
                if entry_prev != prev:
                    return ChainCheck(False, count, line_no, "previous-hash link broken (line removed or reordered)",
                                      prev)
                if entry_hash(seq, entry_prev, record) != digest:
                    return ChainCheck(False, count, line_no, "content does not match its hash (line edited)", prev)
                prev, count = digest, count + 1
    except FileNotFoundError:
        return ChainCheck(True, 0)
    except UnicodeDecodeError:
        return ChainCheck(False, count, count + 1, "not UTF-8 text", prev)
    return ChainCheck(True, count, head=prev)


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
        return check.entries, check.head

    def tail(self) -> tuple[int, str]:
        """``(sequence number of the next entry, hash of the last one)``: the link a new entry gets,
        i.e. the chain's entry count and head hash. :class:`ChainDamaged` if it does not verify."""
        return self._tail()

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append ``record`` (JSON-able) and return the full entry written. Raises
        :class:`ChainDamaged` (nothing written) when the existing chain does not verify."""
        return self.append_linked(lambda _seq, _prev: record)

    def append_linked(self, build: Callable[[int, str], dict[str, Any]]) -> dict[str, Any]:
        """Append the record ``build(seq, prev)`` makes for the link it will get (a signer signs
        the sequence number and previous hash with the record); return the full entry written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        seq, prev = self._tail()
        record = json.loads(_canonical(build(seq, prev)))  # normalise (tuples -> lists) so the hash re-computes
        entry = {"seq": seq, "prev": prev, "record": record, "hash": entry_hash(seq, prev, record)}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return entry

    def records(self) -> list[dict[str, Any]]:
        return [entry["record"] for entry in read_entries(self.path)] if self.path.exists() else []

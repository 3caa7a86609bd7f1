"""The signed, hash-chained decision log and its verifier (pure core: files and ``cryptography``).

Each line is a :class:`~ai4hi_sdk.audit.hash_chain.HashChainLog` entry whose record is::

    {"format": 2, "body": {...decision, evidence, lineage...}, "signer": "<Ed25519 public key, hex>",
     "signature": "<base64 Ed25519 signature>"}

**Format 2** (this code): the signature covers the whole chain link, the canonical JSON of
``{"context": "ai4hi-decision-log", "format": 2, "seq": n, "prev": <hash of entry n-1>,
"signer": ..., "body": ...}``. Deleting or reordering an entry and re-chaining the file therefore
breaks the signature of the next entry, and an entry cannot be moved to another log position.

**Format 1** (logs written before format 2; records have no ``format`` field): the signature covers
only the body. Such a log is still read and its signatures checked, but a deleted entry with the
file re-chained would go unnoticed: :func:`verify_log` reports it as *intact but weaker* and never
as fully verified (``ok`` is false). A format-1 entry after a format-2 entry is a downgrade and fails.

**Trust**: the verifier is given the signer's public key from where it is pinned (the lead's
published key, ``WS/keys/decision_signing_key.pub`` beside the private key), never a file beside
the log: whoever can rewrite the log can rewrite that too (:func:`load_public_key` refuses one).

**Truncation**: signatures cannot show that the newest entries were removed. The entry count and
the hash of the last entry (the *head*) are recorded elsewhere, e.g. in every model card JSON
(``decision_log``); :func:`verify_log` checks such an :class:`Anchor` when given one.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ai4hi_sdk.audit.hash_chain import GENESIS, HashChainLog, read_entries, verify_chain
from ai4hi_sdk.errors import UserError

if TYPE_CHECKING:  # decision.py re-exports this module: no runtime import back
    from ai4hi_sdk.validation.decision import Decision, Evidence

LOG_FORMAT = 2
SIGNATURE_CONTEXT = "ai4hi-decision-log"
WEAK_FORMAT_REASON = ("format 1: weaker, signatures cover bodies only (an entry deleted from the middle, with the "
                      "file re-chained, would not be detected)")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def public_key_hex(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The raw 32-byte public key as 64 hex characters."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _as_public_key(key: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, str):
        key = bytes.fromhex(key.strip())
    return Ed25519PublicKey.from_public_bytes(key)


def signed_message(seq: int, prev: str, signer: str, body: dict[str, Any]) -> bytes:
    """What a format-2 signature covers: the body with its position in the chain and its signer."""
    return _canonical({"context": SIGNATURE_CONTEXT, "format": LOG_FORMAT, "seq": seq, "prev": prev,
                       "signer": signer, "body": body})


class DecisionLog:
    """Signed decision records appended to a hash-chained JSON-lines log (format 2, see the module doc).

    ``body`` holds the decision, an evidence summary and the model lineage (parent model sha256,
    model sha256, job id, data stats, epsilon spent).
    """

    def __init__(self, path: str | Path, signing_key: Ed25519PrivateKey):
        self.chain = HashChainLog(path)
        self.key = signing_key

    def append(
        self,
        decision: "Decision",
        evidence: "Evidence",
        *,
        parent_model_sha256: str | None,
        model_sha256: str | None = None,
        job_id: str | None = None,
        data_stats: dict[str, Any] | None = None,
        epsilon_spent: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Sign and append one decision; returns the chain entry written (``seq``, ``hash``...)."""
        body = {
            "decision": decision.model_dump(mode="json"),
            "evidence": evidence.model_dump(mode="json"),
            "lineage": {"parent_model_sha256": parent_model_sha256, "model_sha256": model_sha256,
                        "job_id": job_id, "data_stats": data_stats or {}, "epsilon_spent": epsilon_spent},
        }
        if extra:
            body["extra"] = extra
        body = json.loads(_canonical(body))
        signer = public_key_hex(self.key)

        def record(seq: int, prev: str) -> dict[str, Any]:
            signature = self.key.sign(signed_message(seq, prev, signer, body))
            return {"format": LOG_FORMAT, "body": body, "signer": signer,
                    "signature": base64.b64encode(signature).decode()}

        return self.chain.append_linked(record)


# ---------------------------------------------------------------------------------- anchors


@dataclass(frozen=True)
class Anchor:
    """What a verifier knows the log held at some point: ``entries`` entries whose last hash is
    ``head``. Either may be missing: a count alone detects a shorter log; a head alone must be the
    hash of some entry. ``source`` says where the anchor came from (for messages)."""

    entries: int | None = None
    head: str | None = None
    source: str = "--expect-head/--expect-entries"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def anchor_from_file(path: str | Path) -> Anchor:
    """The decision-log anchor recorded in a model card JSON (its ``decision_log`` field:
    ``{"entries": N, "head": "<hash>"}``) or in a JSON file holding just that object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--card {path}: file not found") from None
    except (OSError, ValueError) as err:
        raise UserError(f"--card {path}: not a JSON file ({err})") from None
    anchor = data.get("decision_log") if isinstance(data, dict) and "decision_log" in data else data
    if not isinstance(anchor, dict) or not isinstance(anchor.get("entries"), int) \
            or not isinstance(anchor.get("head"), str):
        raise UserError(f"--card {path}: no decision-log anchor in it (a 'decision_log' object with "
                        "'entries' and 'head', as model cards written by 'ai4hi report' carry)")
    return Anchor(entries=anchor["entries"], head=anchor["head"], source=str(path))


def _check_anchor(anchor: Anchor, hashes: list[str]) -> str | None:
    """Why ``hashes`` (the verified entries' hashes, in order) contradict ``anchor``; None if they do not."""
    if anchor.entries is not None:
        if anchor.entries > len(hashes):
            return (f"truncated: {anchor.source} records {anchor.entries} entries, the log has only "
                    f"{len(hashes)}")
        if anchor.head is not None:
            actual = hashes[anchor.entries - 1] if anchor.entries else GENESIS
            if actual != anchor.head:
                return (f"rewritten: entry {anchor.entries}'s hash is {actual[:16]}..., {anchor.source} "
                        f"records {anchor.head[:16]}...")
    elif anchor.head is not None and anchor.head not in hashes and anchor.head != GENESIS:
        return f"no entry has the head hash {anchor.head[:16]}... that {anchor.source} records: entries removed"
    return None


# ---------------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class LogCheck:
    """Result of :func:`verify_log`.

    ``intact``: no tampering found (chain, every signature by the given key, anchors). ``ok``: intact
    *and* every entry is format 2, i.e. fully verified. ``entries``/``head``: the entries verified
    and the hash of the last one (the anchor to record). ``bad_line``: 1-based line of the first
    problem (None for a whole-log problem such as truncation or a weak format).
    """

    ok: bool
    entries: int
    bad_line: int | None = None
    reason: str = ""
    head: str = GENESIS
    intact: bool = False
    format_1_entries: int = 0
    signer: str | None = None
    anchors: tuple[Anchor, ...] = ()

    @property
    def weak(self) -> bool:
        """Intact, but (partly) format 1: signatures that cover bodies only."""
        return self.intact and self.format_1_entries > 0

    @property
    def log_format(self) -> int | str | None:
        if not self.entries:
            return None
        if self.format_1_entries == 0:
            return LOG_FORMAT
        return 1 if self.format_1_entries == self.entries else "1 then 2"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "intact": self.intact, "entries": self.entries, "bad_line": self.bad_line,
                "reason": self.reason, "head": self.head, "format": self.log_format,
                "format_1_entries": self.format_1_entries, "signer": self.signer,
                "anchors": [a.to_dict() for a in self.anchors]}


def _fail(count: int, line: int | None, reason: str, head: str, **kw: Any) -> LogCheck:
    return LogCheck(False, count, line, reason, head, intact=False, **kw)


def verify_log(path: str | Path, public_key: Ed25519PublicKey | bytes | str,
               anchors: list[Anchor] | tuple[Anchor, ...] = ()) -> LogCheck:
    """Verify a decision log against the signer's pinned ``public_key`` and optional ``anchors``.

    Every entry must be signed by that key (an unsigned entry, or one signed by another key,
    fails at its line); format-2 signatures must cover the entry's own sequence number and
    previous hash. A format-1 log that passes every check comes back ``intact`` but not ``ok``.
    """
    key = _as_public_key(public_key)
    key_hex = public_key_hex(key)
    chain = verify_chain(path)
    if not chain.ok:
        return _fail(chain.entries, chain.bad_line, chain.reason, chain.head, signer=key_hex)
    hashes: list[str] = []
    weak = 0
    seen_format_2 = False
    line_no = 0
    with open(path, encoding="utf-8") if Path(path).exists() else open(os.devnull) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            entry = json.loads(line)  # the chain check parsed every line already
            record, count, head = entry["record"], len(hashes), hashes[-1] if hashes else GENESIS
            if not isinstance(record, dict) or "signature" not in record or "body" not in record:
                return _fail(count, line_no, "entry is not signed (every decision must be)", head, signer=key_hex,
                             format_1_entries=weak)
            fmt = record.get("format", 1)
            if record.get("signer", key_hex) != key_hex:
                return _fail(count, line_no, f"signed by another key ({str(record.get('signer'))[:16]}...), not the "
                             f"pinned key {key_hex[:16]}...", head, signer=key_hex, format_1_entries=weak)
            if fmt == LOG_FORMAT:
                message = signed_message(entry["seq"], entry["prev"], key_hex, record["body"])
                seen_format_2 = True
            elif fmt == 1 and not seen_format_2:
                message = _canonical(record["body"])
            elif fmt == 1:
                return _fail(count, line_no, "format-1 entry after format-2 entries (a downgrade: its signature "
                             "would not cover its position)", head, signer=key_hex, format_1_entries=weak)
            else:
                return _fail(count, line_no, f"unknown decision-log format {fmt!r}", head, signer=key_hex,
                             format_1_entries=weak)
            try:
                key.verify(base64.b64decode(record["signature"], validate=True), message)
            except (TypeError, ValueError, InvalidSignature):
                what = ("not valid for this entry's position, signer and content (edited, moved, or an entry "
                        "before it deleted)" if fmt == LOG_FORMAT else "not valid for this entry's body")
                return _fail(count, line_no, f"signature {what}", head, signer=key_hex, format_1_entries=weak)
            weak += fmt == 1
            hashes.append(entry["hash"])
    head = hashes[-1] if hashes else GENESIS
    for anchor in anchors:
        problem = _check_anchor(anchor, hashes)
        if problem:
            return _fail(len(hashes), None, problem, head, signer=key_hex, format_1_entries=weak,
                         anchors=tuple(anchors))
    if weak:
        return LogCheck(False, len(hashes), None, WEAK_FORMAT_REASON, head, intact=True, format_1_entries=weak,
                        signer=key_hex, anchors=tuple(anchors))
    return LogCheck(True, len(hashes), None, "", head, intact=True, signer=key_hex, anchors=tuple(anchors))


def claimed_signer(path: str | Path) -> str | None:
    """The signer the log's first entry names (what the log says about itself: not a trust anchor)."""
    try:
        for entry in read_entries(path):
            record = entry.get("record") if isinstance(entry, dict) else None
            signer = record.get("signer") if isinstance(record, dict) else None
            return signer if isinstance(signer, str) else None
    except (OSError, ValueError):
        return None
    return None


def is_signed_log(path: str | Path) -> bool:
    """Whether any entry of ``path`` looks like a signed decision (a signature, a signer or a body)."""
    try:
        for entry in read_entries(path):
            record = entry.get("record") if isinstance(entry, dict) else None
            if isinstance(record, dict) and ({"signature", "signer", "body"} & set(record)):
                return True
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def load_public_key(value: str | Path, log: str | Path | None = None) -> Ed25519PublicKey:
    """The pinned public key from ``value``: 64 hex characters, or a file holding them or an
    Ed25519 public key in PEM. A file inside ``log``'s folder is refused (not a trust anchor).

    Raises:
        UserError: not a key, or a file beside the log.
    """
    text = str(value).strip()
    path = Path(text).expanduser()
    if path.is_file():
        if log is not None:
            folder = Path(log).resolve().parent
            if path.resolve().parent == folder or folder in path.resolve().parents:
                raise UserError(f"--public-key {path}: the key file lies in the log's folder ({folder}); a key "
                                "kept beside the log is not a trust anchor (whoever can rewrite the log can "
                                "rewrite it): give the signer's key from where it is pinned, e.g. the lead's "
                                "published key or WS/keys/decision_signing_key.pub")
        data = path.read_bytes()
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError as err:
                raise UserError(f"--public-key {path}: not a PEM public key ({err})") from None
            if not isinstance(key, Ed25519PublicKey):
                raise UserError(f"--public-key {path}: not an Ed25519 public key")
            return key
        try:
            text = data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise UserError(f"--public-key {path}: neither hex nor PEM") from None
    try:
        return _as_public_key(text)
    except ValueError as err:
        raise UserError(f"--public-key: not an Ed25519 public key: expected 64 hex characters or a file holding "
                        f"them ({err})") from None

"""``ai4hi audit``: verify hash-chained logs (decision log, egress log, privacy ledger).

``ai4hi audit verify LOG --public-key KEY [--card CARD.json ...] [--expect-entries N] [--expect-head HASH]``

* A signed decision log is verified against the signer's key **pinned outside the log's folder**
  (``--public-key``: 64 hex characters, or a hex or PEM file such as
  ``WS/keys/decision_signing_key.pub``); every entry must carry a valid signature by that key over
  its content *and* its place in the chain. A ``.pub`` file beside the log is never used.
* Removal of the newest entries is detected against an anchor recorded elsewhere: a model card
  JSON (``--card``, repeatable) or ``--expect-entries`` / ``--expect-head``.
* A log without signatures (egress log, privacy ledger) gets the hash-chain check only, which shows
  that the file is internally consistent, not who wrote it.

Exit codes: 0 fully verified; 1 tampered, truncated, unsigned or signed by another key (the first
bad line is named); 2 usage error; 3 intact but format 1 (signatures cover bodies only: weaker,
not fully verified).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ai4hi_sdk.errors import UserError

EXIT_WEAK = 3
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def register(groups: argparse._SubParsersAction) -> None:
    audit = groups.add_parser("audit", help="verify hash-chained decision, egress and privacy logs")
    commands = audit.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    verify = commands.add_parser("verify", help="check a log's hash chain and, for decision logs, its signatures")
    verify.add_argument("log", type=Path, help="JSON-lines log (e.g. decisions.jsonl, ai4hi/egress_log.jsonl)")
    verify.add_argument("--public-key", default=None, metavar="KEY",
                        help="the decision signer's Ed25519 public key, pinned outside the log's folder: 64 hex "
                             "characters or a file holding them (or a PEM public key), e.g. "
                             "WS/keys/decision_signing_key.pub; required for signed decision logs")
    verify.add_argument("--card", type=Path, action="append", default=[], metavar="CARD.json",
                        help="model card JSON (or any JSON with a 'decision_log' anchor) recorded earlier: the log "
                             "must still hold the entries it names (detects truncation); repeatable")
    verify.add_argument("--expect-entries", type=int, default=None, metavar="N",
                        help="the log must hold at least N entries")
    verify.add_argument("--expect-head", default=None, metavar="HASH",
                        help="hash of the newest entry recorded earlier (with --expect-entries: of entry N)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_verify)


def _anchors(args: argparse.Namespace) -> list:
    from ai4hi_sdk.validation.decision_log import Anchor, anchor_from_file

    anchors = [anchor_from_file(card) for card in args.card]
    if args.expect_entries is not None or args.expect_head is not None:
        if args.expect_entries is not None and args.expect_entries < 0:
            raise UserError(f"--expect-entries must be >= 0, got {args.expect_entries}")
        head = args.expect_head.strip().lower() if args.expect_head is not None else None
        if head is not None and not _HEX64.match(head):
            raise UserError(f"--expect-head must be a SHA-256 hash (64 hex characters), got {args.expect_head!r}")
        anchors.append(Anchor(entries=args.expect_entries, head=head))
    return anchors


def _verify(args: argparse.Namespace) -> int:
    from ai4hi_sdk.audit.hash_chain import verify_chain
    from ai4hi_sdk.validation.decision_log import is_signed_log, load_public_key, verify_log

    log: Path = args.log
    if not log.is_file():
        raise UserError(f"log '{log}' not found")
    anchors = _anchors(args)
    console = Console(soft_wrap=True)
    signed = args.public_key is not None or is_signed_log(log) or log.name.startswith("decisions")
    if not signed:
        if anchors:
            raise UserError("--card/--expect-* apply to signed decision logs (give --public-key)")
        chain = verify_chain(log)
        result = {"log": str(log), "ok": chain.ok, "signed": False, "entries": chain.entries,
                  "bad_line": chain.bad_line, "reason": chain.reason, "head": chain.head}
        if args.json:
            console.print_json(json.dumps(result))
        elif chain.ok:
            console.print(f"[green]ok[/]: {escape(str(log))}: {chain.entries} entries, hash chain consistent "
                          f"(unsigned: shows the file was not edited in place, not who wrote it); head {chain.head}",
                          highlight=False)
        else:
            console.print(f"[bold red]TAMPERED[/]: {escape(str(log))}: line {chain.bad_line}: {escape(chain.reason)} "
                          f"({chain.entries} entries before it verified)", highlight=False)
        return 0 if chain.ok else 1

    if args.public_key is None:
        raise UserError(f"{log} is a signed decision log: give the signer's public key with --public-key HEX|FILE, "
                        "pinned outside the log's folder (e.g. WS/keys/decision_signing_key.pub, or the key the "
                        f"lead published); {log.name}.pub beside the log is not a trust anchor: whoever can rewrite "
                        "the log can rewrite it")
    key = load_public_key(args.public_key, log=log)
    check = verify_log(log, key, anchors)
    if args.json:
        console.print_json(json.dumps({"log": str(log), "signed": True, "fully_verified": check.ok, **check.to_dict()}))
    else:
        _print(console, log, check)
    if check.ok:
        return 0
    return EXIT_WEAK if check.weak else 1


def _print(console: Console, log: Path, check) -> None:
    name = escape(str(log))
    signer = (check.signer or "")[:16]
    if check.ok:
        console.print(f"[green]verified[/]: {name}: {check.entries} entries, format {check.log_format}, every entry "
                      f"signed by the pinned key {signer}... over its content and its place in the chain",
                      highlight=False)
    elif check.weak:
        console.print(f"[yellow]WEAK[/]: {name}: {check.entries} entries intact, but {escape(check.reason)}; "
                      "not fully verified", highlight=False)
    else:
        where = f"line {check.bad_line}: " if check.bad_line else ""
        console.print(f"[bold red]TAMPERED[/]: {name}: {where}{escape(check.reason)} ({check.entries} entries before "
                      "it verified)", highlight=False)
        return
    console.print(f"anchor (record it to detect truncation later): {check.entries} entries, head {check.head}",
                  highlight=False)
    if check.anchors:
        for anchor in check.anchors:
            entries = "-" if anchor.entries is None else anchor.entries
            console.print(f"anchor {escape(anchor.source)}: matched ({entries} entries, head "
                          f"{(anchor.head or '-')[:16]}...)", highlight=False)
    else:
        console.print("no anchor given: removal of the newest entries cannot be detected without one "
                      "(--card MODEL_CARD.json, or --expect-entries/--expect-head)", highlight=False)

"""``ai4hi audit``: verify hash-chained logs (decision log, egress log, privacy ledger).

``ai4hi audit verify LOG`` recomputes the hash chain and, for a signed decision log, every
record's Ed25519 signature with the signer's public key (``--public-key HEX|FILE``, default
``LOG.pub``). Exit code 0: intact; 1: tampered (the first bad line is named); 2: usage error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from ai4hi_sdk.errors import UserError


def register(groups: argparse._SubParsersAction) -> None:
    audit = groups.add_parser("audit", help="verify hash-chained decision, egress and privacy logs")
    commands = audit.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    verify = commands.add_parser("verify", help="check a log's hash chain and, for decision logs, its signatures")
    verify.add_argument("log", type=Path, help="JSON-lines log (e.g. decisions.jsonl, ai4hi/egress_log.jsonl)")
    verify.add_argument("--public-key", default=None,
                        help="signer's Ed25519 public key: 64 hex characters or a file holding them (default: LOG.pub)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_verify)


def _is_signed(log: Path) -> bool:
    with open(log, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    record = json.loads(line).get("record", {})
                except (ValueError, AttributeError):
                    return False
                return isinstance(record, dict) and "signature" in record
    return False


def _public_key(arg: str | None, log: Path) -> str | None:
    if arg is None:
        default = log.with_name(log.name + ".pub")
        return default.read_text().strip() if default.is_file() else None
    if Path(arg).is_file():
        return Path(arg).read_text().strip()
    return arg.strip()


def _verify(args: argparse.Namespace) -> int:
    from ai4hi_sdk.audit.hash_chain import verify_chain
    from ai4hi_sdk.validation.decision import verify_log

    log: Path = args.log
    if not log.is_file():
        raise UserError(f"log '{log}' not found")
    signed = _is_signed(log)
    if signed:
        key = _public_key(args.public_key, log)
        if not key:
            raise UserError(f"{log} holds signed decisions: give the signer's key with --public-key (no {log}.pub)")
        try:
            check = verify_log(log, key)
        except ValueError as err:
            raise UserError(f"--public-key: not an Ed25519 public key ({err})") from None
    else:
        check = verify_chain(log)
    result = {"log": str(log), "ok": check.ok, "entries": check.entries, "signed": signed,
              "bad_line": check.bad_line, "reason": check.reason}
    console = Console(soft_wrap=True)
    if args.json:
        console.print_json(json.dumps(result))
    elif check.ok:
        what = "hash chain and signatures" if signed else "hash chain"
        console.print(f"[green]ok[/]: {log}: {check.entries} entries, {what} verified", highlight=False)
    else:
        console.print(f"[bold red]TAMPERED[/]: {log}: line {check.bad_line}: {check.reason} "
                      f"({check.entries} entries before it verified)", highlight=False)
    return 0 if check.ok else 1

"""``ai4hi report RESULT_DIR``: regenerate the HTML report and the model cards of a result folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape


def register(groups: argparse._SubParsersAction) -> None:
    cmd = groups.add_parser("report", help="regenerate report.html and model cards of a result folder")
    cmd.add_argument("result_dir", type=Path, help="folder with history.json (e.g. WS/report from 'ai4hi continuous run')")
    cmd.add_argument("--public-key", default=None, metavar="KEY",
                     help="the decision signer's pinned public key (hex, or a file such as "
                          "WS/keys/decision_signing_key.pub) to verify the decision log with")
    cmd.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from ai4hi_sdk.reports.report import generate_reports
    from ai4hi_sdk.validation.decision_log import load_public_key

    key = None
    if args.public_key is not None:
        key = load_public_key(args.public_key, log=args.result_dir / "decisions.jsonl")
    out = generate_reports(args.result_dir, public_key=key)
    console = Console(soft_wrap=True)
    console.print(f"report: {escape(out['report'])}", highlight=False)
    for model, paths in out["model_cards"].items():
        console.print(f"model card {model}: {escape(paths['markdown'])} (+ .json)", highlight=False)
    console.print(decision_log_line(out["decision_log"]), highlight=False)
    return 0


def decision_log_line(check: dict | None) -> str:
    """One line on the decision log's verification (``generate_reports``'s ``decision_log``)."""
    if check is None:
        return "decision log: none"
    if not check.get("intact"):
        return f"decision log: [bold red]TAMPERED[/] at line {check.get('bad_line')}: {escape(str(check.get('reason')))}"
    how = ("with the pinned key" if check.get("pinned_key") else
           "against the signer it names (not a trust anchor: verify with 'ai4hi audit verify --public-key')")
    weak = f"; {escape(check['reason'])}" if check.get("reason") else ""
    return (f"decision log: {check['entries']} entries, signatures verified {how}{weak}; "
            f"anchor: {check['entries']} entries, head {check['head']}")

"""``ai4hi report RESULT_DIR``: regenerate the HTML report and the model cards of a result folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def register(groups: argparse._SubParsersAction) -> None:
    cmd = groups.add_parser("report", help="regenerate report.html and model cards of a result folder")
    cmd.add_argument("result_dir", type=Path, help="folder with history.json (e.g. WS/report from 'ai4hi continuous run')")
    cmd.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from ai4hi_sdk.reports.report import generate_reports

    out = generate_reports(args.result_dir)
    console = Console(soft_wrap=True)
    console.print(f"report: {out['report']}", highlight=False)
    for model, paths in out["model_cards"].items():
        console.print(f"model card {model}: {paths['markdown']} (+ .json)", highlight=False)
    check = out["decision_log"]
    if check is not None:
        console.print(f"decision log: {check['entries']} entries, " + ("verified" if check["ok"] else
                      f"TAMPERED at line {check['bad_line']}: {check['reason']}"), highlight=False)
    return 0

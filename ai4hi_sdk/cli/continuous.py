"""``ai4hi continuous run LOOP.yaml``: the continuous validation and training loop in the simulator."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape


def register(groups: argparse._SubParsersAction) -> None:
    cont = groups.add_parser("continuous", help="continuous validation and training loop (simulator)")
    commands = cont.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser("run", help="train -> validate -> decide -> drift -> monitor -> retrain -> decide")
    run.add_argument("spec", type=Path, help="loop file (e.g. jobs/continuous.yaml)")
    run.add_argument("--data-root", type=Path, required=True, help="where the synthetic data versions are written")
    run.add_argument("--workspace", type=Path, required=True, help="jobs, site state, models and report/")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ai4hi_sdk.config.continuous import load_continuous_spec
    from ai4hi_sdk.jobs.continuous import run_continuous

    spec = load_continuous_spec(args.spec)
    console = Console(soft_wrap=True)
    out = run_continuous(spec, args.data_root, args.workspace, say=lambda s: console.print(escape(s), highlight=False))
    check = out["decision_log"] or {}
    console.print(f"loop finished in {out['seconds']} s; deployed model: {out['deployed']}", highlight=False)
    console.print(f"decision log: {Path(out['report']).parent / 'decisions.jsonl'} "
                  f"({check.get('entries')} signed entries, {'verified' if check.get('ok') else 'NOT verified'})",
                  highlight=False)
    for model, paths in out["model_cards"].items():
        console.print(f"model card {model}: {paths['markdown']}", highlight=False)
    console.print(f"[bold]report: {escape(out['report'])}[/]", highlight=False)
    return 0

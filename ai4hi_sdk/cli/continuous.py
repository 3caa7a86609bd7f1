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
    console.print(f"loop finished in {out['seconds']} s; deployed model: {out['deployed']} "
                  f"(champion for comparison: {out['champion']})", highlight=False)
    for line in out.get("summary", []):
        console.print(escape(line), highlight=False)
    ok = _print_decision_log(console, Path(out["report"]).parent, Path(args.workspace))
    for model, paths in out["model_cards"].items():
        console.print(f"model card {model}: {paths['markdown']}", highlight=False)
    console.print(f"[bold]report: {escape(out['report'])}[/]", highlight=False)
    return 0 if ok else 1


def _print_decision_log(console: Console, report_dir: Path, workspace: Path) -> bool:
    """Verify the loop's decision log with the signer's key kept outside the report folder (beside
    the private key) and print the anchor to record; False if it does not verify."""
    from ai4hi_sdk.jobs.continuous import DECISION_LOG, SIGNING_KEY
    from ai4hi_sdk.validation.decision_log import load_public_key, verify_log
    from ai4hi_sdk.validation.engine import public_key_file

    log, pub = report_dir / DECISION_LOG, public_key_file(workspace / SIGNING_KEY)
    if not log.is_file():
        console.print(f"no decision log at {escape(str(log))}", highlight=False)
        return False
    check = verify_log(log, load_public_key(pub, log=log))
    state = "verified" if check.ok else f"NOT verified: {check.reason} (line {check.bad_line})"
    console.print(f"decision log: {escape(str(log))} ({check.entries} signed entries, {escape(state)} with the "
                  f"public key {escape(str(pub))}); anchor: {check.entries} entries, head {check.head}",
                  highlight=False)
    console.print(f"audit it: ai4hi audit verify {escape(str(log))} --public-key {escape(str(pub))} "
                  f"--card {escape(str(report_dir / 'model_cards'))}/<model>.json", highlight=False)
    return check.ok

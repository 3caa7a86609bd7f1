"""``ai4hi privacy``: epsilon calculator, DP-SGD planner and a site's privacy report.

* ``ai4hi privacy epsilon --q Q --sigma S --steps N --delta D [--accountant rdp|prv] [--json]``
* ``ai4hi privacy plan --dataset-size N --batch-size B --epochs-per-round E --rounds R
  --target-epsilon EPS --delta D [--accountant rdp|prv] [--json]``
* ``ai4hi privacy report --site WS [--json]``: spent / remaining epsilon per dataset from the
  site's ledger and policy, verification of the ledger's hash chain, and a cross-check of the
  budget state against the ledger (exit code 1 if the chain is broken, the ledger shows an
  overspend, or state and ledger disagree: a truncated, rewritten or lost ledger or state).
* ``ai4hi privacy repair --site WS``: sets aside a half-written last ledger line (a crash or a full
  disk mid-append); nothing else is ever changed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ai4hi_sdk.errors import UserError


def register(groups: argparse._SubParsersAction) -> None:
    privacy = groups.add_parser("privacy", help="differential-privacy calculator, planner and site report")
    commands = privacy.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    eps = commands.add_parser("epsilon", help="epsilon of DP-SGD with Poisson sampling")
    eps.add_argument("--q", type=float, required=True, help="sampling rate (batch size / dataset size), in (0, 1]")
    eps.add_argument("--sigma", type=float, required=True, help="noise multiplier (>= 0)")
    eps.add_argument("--steps", type=int, required=True, help="number of steps (>= 1)")
    eps.add_argument("--delta", type=float, required=True, help="delta, in (0, 1)")
    eps.add_argument("--accountant", default="rdp", help="rdp (default) or prv")
    eps.add_argument("--json", action="store_true", help="print the result as JSON")
    eps.set_defaults(func=_epsilon)

    plan = commands.add_parser("plan", help="noise multiplier for a target epsilon over a federated job")
    plan.add_argument("--dataset-size", type=int, required=True, help="training samples (patients) at the site")
    plan.add_argument("--batch-size", type=int, required=True, help="expected batch size (Poisson sampling)")
    plan.add_argument("--epochs-per-round", type=int, required=True, help="local epochs per round")
    plan.add_argument("--rounds", type=int, required=True, help="federated rounds")
    plan.add_argument("--target-epsilon", type=float, required=True, help="epsilon after the last round")
    plan.add_argument("--delta", type=float, required=True, help="delta, in (0, 1)")
    plan.add_argument("--accountant", default="rdp", help="rdp (default) or prv")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_plan)

    report = commands.add_parser("report", help="privacy spent per dataset at a site; verifies the ledger")
    report.add_argument("--site", type=Path, required=True, help="site workspace (holds ai4hi/privacy_ledger.jsonl)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(func=_report)

    repair = commands.add_parser("repair", help="set aside a half-written last line of the site's privacy ledger")
    repair.add_argument("--site", type=Path, required=True, help="site workspace (holds ai4hi/privacy_ledger.jsonl)")
    repair.set_defaults(func=_repair)


def _epsilon(args: argparse.Namespace) -> int:
    from ai4hi_sdk.privacy.dp.accountants import AccountingError, RDPAccountant, create_accountant
    from ai4hi_sdk.privacy.dp.accountants.base import check_delta, check_steps

    accountant = create_accountant(args.accountant)
    check_steps(args.steps, minimum=1)
    check_delta(args.delta)
    accountant.step(args.sigma, args.q, args.steps)
    try:
        epsilon = accountant.get_epsilon(args.delta)
    except AccountingError as err:
        raise UserError(f"cannot compute epsilon for these parameters: {err}") from None
    result = {
        "accountant": accountant.mechanism,
        "q": args.q,
        "sigma": args.sigma,
        "steps": args.steps,
        "delta": args.delta,
        "epsilon": epsilon if math.isfinite(epsilon) else None,
    }
    if isinstance(accountant, RDPAccountant) and math.isfinite(epsilon):
        result["optimal_order"] = accountant.epsilon_and_order(args.delta)[1]
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    text = "inf (no noise)" if not math.isfinite(epsilon) else f"{epsilon:.4f}"
    Console().print(
        f"epsilon = [bold]{text}[/] at delta = {args.delta:g}  ({accountant.mechanism}; q = {args.q:g}, "
        f"sigma = {args.sigma:g}, {args.steps} steps)",
        highlight=False,
    )
    return 0


def _plan(args: argparse.Namespace) -> int:
    from ai4hi_sdk.privacy.dp.calibration import plan

    from ai4hi_sdk.privacy.dp.accountants import AccountingError

    console = Console(stderr=args.json)
    try:
        with console.status("calibrating the noise multiplier ..."):
            result = plan(
                dataset_size=args.dataset_size,
                batch_size=args.batch_size,
                epochs_per_round=args.epochs_per_round,
                rounds=args.rounds,
                target_epsilon=args.target_epsilon,
                delta=args.delta,
                accountant=args.accountant,
            )
    except AccountingError as err:
        raise UserError(f"cannot plan with these parameters: {err}") from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return 0
    console.print(
        f"noise multiplier [bold]{result.noise_multiplier:.4f}[/]  (sample rate q = {result.sample_rate:.6g}, "
        f"{result.steps_per_round} steps per round, {result.total_steps} steps in all; {result.accountant}, "
        f"delta = {result.delta:g}, target epsilon {result.target_epsilon:g})",
        highlight=False,
    )
    every = len(result.epsilon_rounds) == result.rounds
    table = Table(title="epsilon after each round" if every else
                  f"epsilon after {len(result.epsilon_rounds)} of the {result.rounds} rounds (log-spaced)")
    table.add_column("round", justify="right")
    table.add_column("steps so far", justify="right")
    table.add_column("epsilon", justify="right")
    for index, epsilon in zip(result.epsilon_rounds, result.epsilon_after_each_round):
        table.add_row(str(index), str(index * result.steps_per_round), f"{epsilon:.4f}")
    console.print(table)
    return 0


def _report(args: argparse.Namespace) -> int:
    from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
    from ai4hi_sdk.config.site_policy import SITE_POLICY, load_site_policy

    site: Path = args.site
    if not site.is_dir():
        raise UserError(f"site workspace not found: {site}")
    policy_path, ledger_path = site / SITE_POLICY, site / PRIVACY_LEDGER
    policy = load_site_policy(policy_path) if policy_path.exists() else None
    ledger = PrivacyLedger(ledger_path)
    check = ledger.verify()
    summary = ledger.summary(policy)
    violations = [v for item in summary.values() for v in item.violations]
    mismatches = _state_mismatches(site, policy, ledger) if policy is not None and check.ok else []
    ok = check.ok and not violations and not mismatches

    if args.json:
        print(json.dumps({
            "site": str(site),
            "ledger": str(ledger_path),
            "policy": str(policy_path) if policy else None,
            "delta": policy.delta if policy else None,
            "accountant": policy.accountant if policy else None,
            "chain": {"ok": check.ok, "entries": check.entries, "bad_line": check.bad_line, "reason": check.reason},
            "datasets": {ds: item.to_dict() for ds, item in summary.items()},
            "state_mismatches": mismatches,
            "ok": ok,
        }, indent=2, sort_keys=True))
        return 0 if ok else 1

    console = Console()
    if policy is None:
        console.print(f"[yellow]no site policy at {policy_path}: limits unknown[/]")
    title = f"privacy spent at {site}"
    if policy:
        title += f" (delta = {policy.delta:g}, accountant {policy.accountant})"
    table = Table(title=title)
    for name in ("dataset", "epsilon spent", "limit", "remaining", "rounds", "refused", "jobs"):
        table.add_column(name, justify="left" if name in ("dataset", "jobs") else "right")
    for ds, item in summary.items():
        table.add_row(
            ds, f"{item.spent:.4f}", _fmt(item.limit), _fmt(item.remaining), str(item.rounds), str(item.refused),
            ", ".join(item.jobs),
        )
    if summary:
        console.print(table)
    else:
        console.print("no privacy spent: the ledger has no rounds")
    if check.ok:
        console.print(f"[green]ledger verified[/]: {check.entries} entries, hash chain intact ({ledger_path})")
    else:
        console.print(
            f"[bold red]ledger verification FAILED at line {check.bad_line}[/]: {check.reason} ({ledger_path}); "
            f"only the {check.entries} entries before it are counted above",
            highlight=False,
        )
    for violation in violations:
        console.print(f"[bold red]overspend[/]: {violation}", highlight=False)
    for mismatch in mismatches:
        console.print(f"[bold red]state and ledger disagree[/]: {mismatch}", highlight=False)
    return 0 if ok else 1


def _state_mismatches(site: Path, policy, ledger) -> list[str]:
    """Where the budget state and the ledger disagree: a ledger shorter than or different from the
    state's anchor, a state file lost (the budget rebuilds it from the ledger), a state that says
    more than the ledger."""
    from ai4hi_sdk.privacy.dp.accountants import AccountingError
    from ai4hi_sdk.privacy.dp.budget import PRIVACY_STATE_DIR, PrivacyBudget

    budget = PrivacyBudget(site / PRIVACY_STATE_DIR, policy, ledger)
    problems = []
    for dataset in budget.datasets():
        try:
            budget.epsilon_spent(dataset)
        except AccountingError as err:
            problems.append(f"dataset {dataset}: {err}")
    problems += [f"dataset {ds}: {why}" for ds, why in sorted(budget.discrepancies.items())]
    return problems


def _repair(args: argparse.Namespace) -> int:
    from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, set_aside_torn_tail

    moved = set_aside_torn_tail(args.site / PRIVACY_LEDGER)
    Console().print(f"set aside the half-written last line into {moved}; `ai4hi privacy report --site {args.site}` "
                    "checks the rest" if moved else "the ledger has no half-written last line: nothing changed",
                    highlight=False, soft_wrap=True)
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

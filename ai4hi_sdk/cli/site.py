"""``ai4hi site``: a site admin checks, starts and stops their site (or the server) from its kit."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

_STYLE = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


def register(groups: argparse._SubParsersAction) -> None:
    site = groups.add_parser("site", help="check, start and stop a provisioned site or server")
    commands = site.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    check = commands.add_parser("check", help="readiness report: certificates, GPUs, NVFlare preflight, DICOM, policy")
    check.add_argument("kit", type=Path, help="the site's (or server's) kit folder from 'ai4hi provision'")
    check.add_argument("--data", type=Path, default=None,
                       help="the site's DICOM folder (default: data_dir in the kit's ai4hi/site.yaml)")
    check.set_defaults(func=_check)

    start = commands.add_parser("start", help="start the site (or server) in the background from its kit")
    start.add_argument("kit", type=Path)
    start.add_argument("--timeout", type=float, default=90, help="seconds to wait for NVFlare to come up")
    start.set_defaults(func=_start)

    stop = commands.add_parser("stop", help="stop every process of the site (or server); none is left behind")
    stop.add_argument("kit", type=Path)
    stop.set_defaults(func=_stop)

    allow = commands.add_parser("allow-code", help="allow (or --revoke) a job's custom code at this site by its SHA-256")
    allow.add_argument("kit", type=Path,
                       help="the site's kit or workspace (holding ai4hi/site_policy.yaml), or a policy file")
    allow.add_argument("sha256", help="the code bundle's SHA-256, as `ai4hi job export` prints it")
    allow.add_argument("--revoke", action="store_true", help="remove it from the allowed list")
    allow.set_defaults(func=_allow_code)

    backbone = commands.add_parser(
        "add-backbone", help="install a base checkpoint (backbone folder) in this site's store, by its sha256")
    backbone.add_argument("kit", type=Path, help="the site's kit or workspace (backbones go to its ai4hi/backbones/)")
    backbone.add_argument("backbone", type=Path,
                          help="a backbone folder (backbone.safetensors + provenance.json) from 'ai4hi model import' "
                               "or a pretraining job's result/backbone")
    backbone.add_argument("--sha256", default=None, help="refuse unless the backbone has this sha256 (from the lead)")
    backbone.set_defaults(func=_add_backbone)


def _check(args: argparse.Namespace) -> int:
    from ai4hi_sdk.deploy.kit import load_kit
    from ai4hi_sdk.deploy.readiness import site_readiness

    kit = load_kit(args.kit, expect=("site", "server"))
    console = Console()
    with console.status(f"checking {kit.kind} '{kit.name}' ..."):
        report = site_readiness(kit, args.data)
    table = Table(title=f"{kit.kind} '{kit.name}' ({kit.path})")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        table.add_row(check.name, _STYLE[check.level], escape(check.detail))
    console.print(table)
    if report.site_reads is not None:
        reads, how = report.site_reads
        line = escape(f"the site will read: {reads if reads else 'not set'} ({how})")
        if reads is not None and not reads.is_dir():
            line += " [bold red]MISSING[/]"
        if args.data is not None and (reads is None or args.data.resolve() != reads.resolve()):
            line += escape(f"; the checks above are of --data {args.data}, which is not that folder")
        console.print(line, highlight=False, soft_wrap=True)
    if report.data_summary:
        subgroups = report.data_summary.get("subgroup_counts", {})
        data = Table(title="DICOM summary (counts of studies)")
        data.add_column("attribute")
        data.add_column("counts", overflow="fold")
        for attr, counts in subgroups.items():
            data.add_row(attr, escape(", ".join(f"{k}: {v}" for k, v in counts.items())))
        console.print(data)
    if report.policy:
        policy = Table(title=f"privacy policy in force ({kit.path / 'ai4hi' / 'site_policy.yaml'})")
        policy.add_column("setting")
        policy.add_column("value")
        for key, value in report.policy.items():
            policy.add_row(key, escape(str(value)))
        console.print(policy)
    if not report.ready:
        reasons = "; ".join(f"{c.name}: {c.detail}" for c in report.failures)
        Console(stderr=True).print(f"[bold red]not ready:[/] {escape(reasons)}", highlight=False)
        return 1
    console.print(f"[green]ready[/]: start it with 'ai4hi site start {kit.path}'")
    return 0


def _start(args: argparse.Namespace) -> int:
    from ai4hi_sdk.deploy.kit import load_kit
    from ai4hi_sdk.deploy.processes import LOG_FILE, start_kit

    kit = load_kit(args.kit, expect=("site", "server"))
    console = Console()
    with console.status(f"starting {kit.kind} '{kit.name}' ..."):
        pid = start_kit(kit, timeout_s=args.timeout)
    console.print(f"{kit.kind} '{kit.name}' started (NVFlare pid {pid}); logs: {kit.path / 'log.txt'}, "
                  f"{kit.path / LOG_FILE}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from ai4hi_sdk.deploy.kit import load_kit
    from ai4hi_sdk.deploy.processes import stop_kit

    kit = load_kit(args.kit, expect=("site", "server"))
    report = stop_kit(kit)
    ended = sorted(set(report.terminated) | set(report.killed))
    if not ended:
        Console().print(f"{kit.kind} '{kit.name}' was not running")
    else:
        Console().print(f"{kit.kind} '{kit.name}' stopped ({len(ended)} processes"
                        + (f", {len(report.killed)} had to be killed" if report.killed else "") + ")")
    return 0


def _allow_code(args: argparse.Namespace) -> int:
    from ai4hi_sdk.site.policy_file import allow_code

    allowed = allow_code(args.kit, args.sha256, revoke=args.revoke)
    verb = "revoked" if args.revoke else "allowed"
    Console().print(f"{verb} custom code {args.sha256.strip().lower()}; this site now runs "
                    f"{len(allowed)} custom code bundle(s): {', '.join(a[:12] + '...' for a in allowed) or 'none'}",
                    highlight=False)
    return 0


def _add_backbone(args: argparse.Namespace) -> int:
    from ai4hi_sdk.site.backbones import install_backbone, installed_backbones

    if not args.kit.is_dir():
        from ai4hi_sdk.errors import UserError

        raise UserError(f"'{args.kit}' is not a folder (the site's kit or workspace)")
    done = install_backbone(args.backbone, args.kit, expected_sha256=args.sha256)
    Console().print(f"{done.action} backbone {done.sha256} at {done.folder}; this site holds "
                    f"{len(installed_backbones(args.kit))} backbone(s). Jobs naming model.checkpoint_sha256: "
                    f"{done.sha256} now use it (verified before round 0).", highlight=False)
    return 0

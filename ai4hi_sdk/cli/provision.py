"""``ai4hi provision``: consortium file -> NVFlare kits (server, sites, people) with site config."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def register(groups: argparse._SubParsersAction) -> None:
    cmd = groups.add_parser("provision", help="provision a consortium: NVFlare kits overlaid with ai4hi site config")
    cmd.add_argument("consortium", type=Path, help="consortium YAML (see site_templates/consortium.example.yaml)")
    cmd.add_argument("--out", type=Path, required=True, help="workspace to write project.yml and the kits into")
    cmd.set_defaults(func=_provision)


def _provision(args: argparse.Namespace) -> int:
    from ai4hi_sdk.config.consortium import load_consortium
    from ai4hi_sdk.provision.provision import provision

    consortium = load_consortium(args.consortium)
    console = Console()
    with console.status(f"provisioning '{consortium.name}' with nvflare provision ..."):
        kits = provision(consortium, args.out)
    roles = {p.email: p.role for p in consortium.people}
    say = lambda text: console.print(text, highlight=False, soft_wrap=True)  # noqa: E731 - paths never wrapped
    say(f"[bold]kits of {consortium.name}[/]: send each kit only to whom it names")
    say(f"  {kits['server']}\n      for the server operator ({consortium.server.host})")
    for site, info in kits["sites"].items():
        say(f"  {info['kit']}\n      for {info['admin']}: runs site {site}; {info['policy']}")
        if info.get("kept"):
            say(f"      [yellow]{info['kept']}[/]")
    for person, kit in kits["admins"].items():
        what = {"lead": "the lead: submits jobs", "site_admin": "a site admin",
                "project_admin": "the project admin"}.get(roles.get(person, ""), "a member")
        say(f"  {kit}\n      for {person}, {what} (NVFlare admin console kit)")
    console.print(
        f"[bold]stays with the lead, never sent:[/] {kits['lead_only']} (the root CA's and every participant's "
        f"private key) and {Path(args.out).resolve() / 'project.yml'}; {kits['private_keys']} private key files "
        "are readable by their owner only (0600).", highlight=False, soft_wrap=True)
    first = next(iter(kits["sites"].values()), None)
    if first:
        console.print(f"next, on each site's machine: [bold]ai4hi site check {first['kit']}[/] (then "
                      "`ai4hi site start`); the server first. Kit index: "
                      f"{Path(args.out).resolve() / 'ai4hi_kits.json'}", highlight=False, soft_wrap=True)
    return 0

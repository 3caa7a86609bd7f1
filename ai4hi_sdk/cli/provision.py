"""``ai4hi provision``: consortium file -> NVFlare kits (server, sites, people) with site config."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table


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
    table = Table(title=f"kits of {consortium.name}")
    table.add_column("participant")
    table.add_column("kit")
    table.add_column("site privacy policy")
    table.add_row(f"server ({consortium.server.host})", kits["server"], "-")
    for site, info in kits["sites"].items():
        table.add_row(site, info["kit"], info["policy"])
    for person, kit in kits["admins"].items():
        table.add_row(person, kit, "-")
    console.print(table)
    console.print(f"kit index: {Path(args.out) / 'ai4hi_kits.json'}. Send each participant only their own kit.")
    return 0

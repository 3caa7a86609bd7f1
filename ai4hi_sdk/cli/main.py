"""Entry point of the ``ai4hi`` command.

Each command group lives in its own module exposing ``register(subparsers)``; a registered
sub-command sets ``func(args) -> int`` as its handler. User mistakes raise
:class:`ai4hi_sdk.errors.UserError` and are printed as one clear message (exit code 2),
never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from ai4hi_sdk import __version__
from ai4hi_sdk.errors import UserError

COMMAND_GROUPS = ("data", "job", "privacy", "provision", "site", "audit", "report", "continuous", "model")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="ai4hi",
        description="Federated training and clinical validation of radiology AI (NVIDIA FLARE).",
    )
    parser.add_argument("--version", action="version", version=f"ai4hi {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    groups.required = True
    for name in COMMAND_GROUPS:
        importlib.import_module(f"ai4hi_sdk.cli.{name}").register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

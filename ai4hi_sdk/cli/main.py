"""Entry point of the ``ai4hi`` command.

Each command group lives in its own module exposing ``register(subparsers)``; a registered
sub-command sets ``func(args) -> int`` as its handler. User mistakes raise
:class:`ai4hi_sdk.errors.UserError` and are printed as one clear message (exit code 2),
never as a traceback. SIGTERM and SIGHUP raise :class:`~ai4hi_sdk.jobs.signals.Terminated` while a
command runs, so it cleans up (a simulator's whole process tree is killed) and exits with
128 + the signal number; Ctrl-C exits 130 the same way.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from ai4hi_sdk import __version__
from ai4hi_sdk.errors import ConfigError, UserError
from ai4hi_sdk.jobs.signals import Terminated, stop_signals_raise

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
        with stop_signals_raise(override=True):
            return int(args.func(args) or 0)
    except UserError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(_one_line(err))}", highlight=False)
        return 2
    except Terminated as stop:
        Console(stderr=True, soft_wrap=True).print(f"{stop}: stopped (any simulator started was stopped with all "
                                                   "its processes)", highlight=False)
        return 128 + stop.signum
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130


def _one_line(err: UserError) -> str:
    """The message; a configuration error with a single problem on one line (several: one per line)."""
    if isinstance(err, ConfigError) and len(err.problems) == 1:
        field, reason = err.problems[0]
        return f"{err.file}: invalid configuration: {field}: {reason}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())

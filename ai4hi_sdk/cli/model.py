"""``ai4hi model``: bring a pretrained backbone into the consortium.

    ai4hi model import FILE --arch ARCH --out DIR [--source S] [--licence L]
                            [--allow-unexpected] [--overwrite] [--json]
    ai4hi model archs

``import`` reads a safetensors file (or a ``.pt`` only through ``torch.load(weights_only=True)``),
strips wrapper prefixes, checks every tensor against the architecture and writes
``DIR/backbone.safetensors`` + ``DIR/provenance.json`` (sha256, source, licence). torch is imported
inside the handlers so ``ai4hi --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.presets import PRESETS, preset_names


def register(groups: Any) -> None:
    """Add the ``model`` command group to the top-level sub-parsers."""
    model = groups.add_parser("model", help="import pretrained backbones (checkpoints) with provenance")
    cmds = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    cmds.required = True

    imp = cmds.add_parser("import", help="check a checkpoint against an architecture and record its provenance")
    imp.add_argument("file", type=Path, metavar="FILE", help=".safetensors (preferred) or .pt/.pth/.bin/.ckpt")
    imp.add_argument("--arch", required=True, metavar="ARCH",
                     help=f"backbone architecture: {', '.join(preset_names())} "
                          "(or a JSON object, e.g. '{\"preset\": \"vit-micro-2d\", \"img_size\": 64}')")
    imp.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write the backbone into")
    imp.add_argument("--source", default="unknown", help="where the checkpoint comes from (URL, paper, team)")
    imp.add_argument("--licence", "--license", dest="licence", default="unknown", help="its licence, e.g. Apache-2.0")
    imp.add_argument("--allow-unexpected", action="store_true",
                     help="drop keys the architecture does not have (e.g. another task's head) instead of refusing")
    imp.add_argument("--overwrite", action="store_true", help="replace a backbone already in DIR")
    imp.add_argument("--json", action="store_true", help="print the provenance record as JSON")
    imp.set_defaults(func=cmd_import)

    archs = cmds.add_parser("archs", help="list the backbone architectures")
    archs.set_defaults(func=cmd_archs)


def _arch(value: str) -> Any:
    if value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise UserError(f"--arch: not valid JSON ({err})") from err
    return value


def cmd_import(args: argparse.Namespace) -> int:
    import warnings

    from ai4hi_sdk.foundation.checkpoint import import_checkpoint

    # MONAI's sin-cos position embedding calls torch.meshgrid without indexing=: not the user's concern
    warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)

    result = import_checkpoint(args.file, _arch(args.arch), args.out, source=args.source, licence=args.licence,
                               allow_unexpected=args.allow_unexpected, overwrite=args.overwrite)
    record = result.provenance.to_dict()
    if args.json:
        sys.stdout.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return 0
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]Imported[/] {escape(str(args.file))} as {escape(str(args.arch))} -> {escape(str(args.out))}")
    rows = [
        ("format", record["source_format"]),
        ("source sha256", record["source_sha256"]),
        ("backbone sha256", record["sha256"]),
        ("tensors / parameters", f"{record['tensors']} / {record['parameters']:,}"),
        ("prefixes stripped", ", ".join(f"{p} ({n})" for p, n in record["stripped_prefixes"].items()) or "none"),
        ("converted from", record["converted_from"] or "-"),
        ("dropped keys", ", ".join(record["dropped_keys"]) or "none"),
        ("BatchNorm layers (kept frozen)", str(len(record["batchnorm_layers"]))),
        ("source / licence", f"{record['source']} / {record['licence']}"),
    ]
    for label, value in rows:
        console.print(f"  {label}: {escape(str(value))}")
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    console = Console(highlight=False, soft_wrap=True)
    for name in preset_names():
        config = PRESETS[name]
        detail = ", ".join(f"{k}={v}" for k, v in config.items() if k != "family")
        console.print(f"{name}  ({config['family']}: {escape(detail)})")
    return 0

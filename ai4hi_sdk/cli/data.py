"""``ai4hi data``: inspect a site's DICOM folder and write synthetic sites.

    ai4hi data scan DIR [--labels labels.csv] [--json] [--verify-pixels]
    ai4hi data synth OUT --sites N [--task classification|segmentation]
                         [--studies-per-site K] [--seed S]
                         [--drift-site NAME --drift-intensity X] [--overwrite]
                         [--labelled-fraction F] [--finding opacity|subtle]

Heavy imports (pydicom, numpy, scipy) happen inside the handlers so ``ai4hi --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ai4hi_sdk.errors import UserError

# Skipped files listed one by one up to this many; the rest are counted.
MAX_SKIPPED_ROWS = 200


def register(groups: Any) -> None:
    """Add the ``data`` command group to the top-level sub-parsers."""
    data = groups.add_parser("data", help="scan DICOM folders, write synthetic sites")
    cmds = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    cmds.required = True

    scan = cmds.add_parser(
        "scan",
        help="index a DICOM folder: readable images, skipped files and why, label coverage",
    )
    scan.add_argument("dir", type=Path, metavar="DIR", help="folder holding DICOM files")
    scan.add_argument("--labels", type=Path, metavar="CSV", help="label manifest to join")
    scan.add_argument("--label-column", default="label", help="label column (default: label)")
    scan.add_argument(
        "--key-column", default=None,
        help="UID column of the manifest (default: auto-detect SOP/Series/Study UID)",
    )
    scan.add_argument("--json", action="store_true", help="print the full report as JSON")
    scan.add_argument(
        "--verify-pixels", action="store_true", help="decode every image (slower, stricter)"
    )
    scan.set_defaults(func=cmd_scan)

    synth = cmds.add_parser("synth", help="write a synthetic consortium of DICOM sites")
    synth.add_argument("out", type=Path, metavar="OUT", help="folder to write hospital-<k>/ into")
    synth.add_argument("--sites", type=int, required=True, help="number of sites")
    synth.add_argument(
        "--task", choices=("classification", "segmentation"), default="classification"
    )
    synth.add_argument("--studies-per-site", type=int, default=40, help="default: 40")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same files (default: 0)")
    synth.add_argument("--drift-site", metavar="NAME", help="site to drift, e.g. hospital-2")
    synth.add_argument(
        "--drift-intensity", type=float, metavar="X",
        help="intensity shift of the drift site, fraction of full range (e.g. 0.1)",
    )
    synth.add_argument(
        "--drift-manufacturer", metavar="NAME", help="Manufacturer header of the drift site"
    )
    synth.add_argument("--overwrite", action="store_true", help="replace existing site folders")
    synth.add_argument(
        "--labelled-fraction", type=float, default=1.0, metavar="F",
        help="share of studies given a label row; the rest are unlabelled (default: 1)",
    )
    synth.add_argument(
        "--finding", choices=("opacity", "subtle"), default="opacity",
        help="positive finding: bright opacity (default) or a subtle nodule that mean brightness cannot reveal",
    )
    synth.set_defaults(func=cmd_synth)


# --------------------------------------------------------------------------- scan


def cmd_scan(args: argparse.Namespace) -> int:
    from ai4hi_sdk.data.labels import join_labels, load_label_manifest
    from ai4hi_sdk.data.scan import scan_directory

    if args.labels is not None and not args.labels.is_file():
        raise UserError(f"label file not found: {args.labels}")
    report = scan_directory(args.dir, verify_pixels=args.verify_pixels)
    join = None
    if args.labels is not None:
        manifest = load_label_manifest(
            args.labels, key_column=args.key_column, label_column=args.label_column
        )
        join = join_labels(report, manifest)

    if args.json:
        doc = report.to_dict()
        if join is not None:
            doc["labels"] = join.to_dict()
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    _print_scan(_console(), report, join)
    return 0


def _console() -> Console:
    # Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def _table(title: str, *columns: str, numeric_from: int = 1) -> Table:
    """Table whose columns from index ``numeric_from`` on are right-aligned numbers."""
    table = Table(title=title, title_justify="left", show_edge=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i >= numeric_from else "left")
    return table


def _print_scan(console: Console, report: Any, join: Any) -> None:
    summary = report.summary()
    console.print(f"[bold]Scanned[/] {escape(report.root)}")
    files = _table("Files", "", "count")
    files.add_row("seen", str(summary["files_seen"]))
    files.add_row("read (images)", str(summary["files_read"]))
    files.add_row("skipped", str(summary["files_skipped"]))
    files.add_row("studies", str(summary["studies"]))
    files.add_row("series", str(summary["series"]))
    console.print(files)

    if report.skipped:
        reasons = _table("Skipped by reason", "reason", "files")
        for reason, n in summary["skipped_by_reason"].items():
            reasons.add_row(reason, str(n))
        console.print(reasons)
        detail = _table("Skipped files", "path", "reason", "detail", numeric_from=3)
        for s in report.skipped[:MAX_SKIPPED_ROWS]:
            detail.add_row(escape(s.path), s.reason_code, escape(s.detail))
        console.print(detail)
        if len(report.skipped) > MAX_SKIPPED_ROWS:
            console.print(f"... and {len(report.skipped) - MAX_SKIPPED_ROWS} more (use --json)")

    if summary["modalities"]:
        mods = _table("Modalities", "modality", "images")
        for modality, n in summary["modalities"].items():
            mods.add_row(escape(modality), str(n))
        console.print(mods)

    for attr, counts in summary["subgroup_counts"].items():
        if counts:
            sub = _table(f"Studies by {attr.replace('_', ' ')}", attr, "studies")
            for value, n in counts.items():
                sub.add_row(escape(value), str(n))
            console.print(sub)

    if join is not None:
        ls = join.summary()
        lab = _table(f"Labels (keyed by {ls['key_level']} UID)", "", "count")
        lab.add_row("labelled images", f"{ls['labelled_instances']} / {ls['instances']}")
        lab.add_row("coverage", f"{100 * ls['coverage']:.1f} %")
        lab.add_row("images without label", str(ls["missing_instances"]))
        lab.add_row("studies without label", str(ls["missing_studies"]))
        lab.add_row("label keys matching no image", str(ls["extra_keys"]))
        lab.add_row("duplicate keys", str(ls["duplicates"]))
        lab.add_row("other manifest problems", str(ls["problems"] - ls["duplicates"]))
        console.print(lab)


# --------------------------------------------------------------------------- synth


def cmd_synth(args: argparse.Namespace) -> int:
    from ai4hi_sdk.data.synth import synth_consortium

    if args.sites < 1:
        raise UserError(f"--sites must be >= 1, got {args.sites}")
    if args.studies_per_site < 1:
        raise UserError(f"--studies-per-site must be >= 1, got {args.studies_per_site}")
    drifting = args.drift_intensity is not None or args.drift_manufacturer is not None
    if drifting and args.drift_site is None:
        raise UserError("--drift-intensity / --drift-manufacturer need --drift-site NAME")
    if args.drift_site is not None and not drifting:
        raise UserError("--drift-site needs --drift-intensity X and/or --drift-manufacturer")
    drift = (
        {args.drift_site: args.drift_intensity} if args.drift_intensity is not None else None
    )
    vendors = (
        {args.drift_site: args.drift_manufacturer} if args.drift_manufacturer else None
    )
    sites = synth_consortium(
        args.out, sites=args.sites, task=args.task, studies_per_site=args.studies_per_site,
        seed=args.seed, drift=drift, manufacturers=vendors, overwrite=args.overwrite,
        labelled_fraction=args.labelled_fraction, finding=args.finding,
    )
    console = _console()
    table = _table(
        f"Synthetic {args.task} consortium in {escape(str(args.out))} (seed {args.seed})",
        "site", "modality", "manufacturer", "model", "studies", "files", "positives",
        "mean value", "drift", numeric_from=4,
    )
    for s in sites:
        table.add_row(
            s.name, s.modality, escape(s.manufacturer), escape(s.model), str(s.studies),
            str(s.files), "-" if s.positives is None else str(s.positives),
            f"{s.mean_intensity:.0f}", f"{s.intensity_shift:+.2f}" if s.intensity_shift else "",
        )
    console.print(table)
    if args.labelled_fraction < 1.0:
        console.print("Labelled studies: " + ", ".join(f"{s.name} {s.labelled}/{s.studies}" for s in sites))
    console.print("Each site: dicom/ (Part 10 files), labels.csv"
                  + (", masks/<SeriesInstanceUID>.npy" if args.task == "segmentation" else ""))
    return 0

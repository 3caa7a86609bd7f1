"""``ai4hi data``: inspect a site's DICOM folder and write synthetic sites.

    ai4hi data scan DIR [--labels labels.csv] [--reports reports.csv] [--json] [--verify-pixels]
                        [--job JOB.yaml]
    ai4hi data synth OUT --sites N [--task classification|segmentation]
                         [--studies-per-site K] [--seed S] [--reports]
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
        help="index a DICOM folder: readable images, skipped files and why, label and report coverage",
    )
    scan.add_argument("dir", type=Path, metavar="DIR", help="folder holding DICOM files")
    scan.add_argument("--labels", type=Path, metavar="CSV", help="label manifest to join")
    scan.add_argument("--label-column", default="label", help="label column (default: label)")
    scan.add_argument(
        "--key-column", default=None,
        help="UID column of the manifest (default: auto-detect SOP/Series/Study UID)",
    )
    scan.add_argument(
        "--reports", type=Path, metavar="CSV",
        help="report export (reports.csv, keyed by StudyInstanceUID or AccessionNumber) to join; "
             "DICOM SR reports in DIR are always counted",
    )
    scan.add_argument("--json", action="store_true", help="print the full report as JSON")
    scan.add_argument(
        "--verify-pixels", action="store_true", help="decode every image (slower, stricter)"
    )
    scan.add_argument(
        "--job", type=Path, metavar="JOB.yaml",
        help="also show what this job would train on: images left out by reason, series refused as volumes",
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
    synth.add_argument(
        "--reports", action="store_true",
        help="also write a report per study (reports.csv rows and DICOM SR objects; classification only)",
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
    if args.reports is not None and not args.reports.is_file():
        raise UserError(f"report file not found: {args.reports}")
    report = scan_directory(args.dir, verify_pixels=args.verify_pixels)
    spec = None
    if args.job is not None:
        spec = _apply_job(report, args.job, Path(args.dir))
    join = None
    if args.labels is not None:
        manifest = load_label_manifest(
            args.labels, key_column=args.key_column, label_column=args.label_column
        )
        join = join_labels(report, manifest)
    reports = weak = None
    if args.reports is not None or report.report_objects:
        from ai4hi_sdk.data.reports import join_reports, load_report_csv

        reports = join_reports(report, load_report_csv(args.reports) if args.reports is not None else None)
        if spec is not None and spec.data.labels_from == "reports":
            weak = _weak_labels(reports, spec)

    if args.json:
        doc = report.to_dict()
        if join is not None:
            doc["labels"] = join.to_dict()
        if reports is not None:
            doc["reports"] = reports.to_dict()
        if weak is not None:
            doc["weak_labels"] = weak.summary()
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    _print_scan(_console(), report, join, reports, weak)
    return 0


def _weak_labels(reports: Any, spec: Any) -> Any:
    """The job's weak labels of the scanned studies (counts are shown, never a report)."""
    from ai4hi_sdk.data.labeler import UnknownRuleSet, get_rule_set
    from ai4hi_sdk.data.weak_labels import weak_labels

    try:
        rules = get_rule_set(spec.data.labeler_version)
        return weak_labels(reports, rules, spec.data.report_finding, spec.data.uncertain)
    except (UnknownRuleSet, ValueError) as err:
        raise UserError(str(err.args[0])) from None


def _apply_job(report: Any, job_path: Path, root: Path) -> Any:
    """Add to ``report`` what the job leaves out (by reason) and, for volumes, the series it refuses;
    returns the job spec."""
    from ai4hi_sdk.config.job_spec import load_job_spec
    from ai4hi_sdk.data.selection import ImageSelection, select
    from ai4hi_sdk.tasks.registry import UnknownTaskKind, task_strategy

    spec = load_job_spec(job_path)
    selection = ImageSelection.from_spec(spec.data)
    try:
        purpose = task_strategy(spec.task).data_kind  # one item per image, or volumes assembled by geometry
    except UnknownTaskKind as err:
        raise UserError(f"{job_path}: {err}") from None
    kept, excluded = select(report.instances, selection, purpose)
    report.excluded.extend(excluded)
    if purpose == "volume":
        from ai4hi_sdk.data.assembly import assemble_volumes, group_by_series

        volumes, refusals = assemble_volumes(group_by_series(kept), root, image_types=selection.image_types)
        report.refused_series.extend(refusals)
        report.excluded.extend(e for volume in volumes for e in volume.dropped)
    return spec


def _console() -> Console:
    # Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def _table(title: str, *columns: str, numeric_from: int = 1) -> Table:
    """Table whose columns from index ``numeric_from`` on are right-aligned numbers."""
    table = Table(title=title, title_justify="left", show_edge=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i >= numeric_from else "left")
    return table


def _print_scan(console: Console, report: Any, join: Any, reports: Any = None, weak: Any = None) -> None:
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

    if report.segmentations:
        console.print(f"DICOM SEG objects (masks, not images): {len(report.segmentations)}")
    if report.report_objects:
        console.print(f"DICOM SR objects (reports, not images): {len(report.report_objects)}")
    if report.excluded:
        left = _table("Left out by the job (images it does not train on)", "reason", "images")
        for reason, n in summary["excluded_by_reason"].items():
            left.add_row(reason, str(n))
        console.print(left)
    if report.refused_series:
        refused = _table("Series refused as volumes", "reason", "detail", numeric_from=2)
        for r in report.refused_series[:MAX_SKIPPED_ROWS]:
            refused.add_row(r.reason_code, escape(r.detail))
        console.print(refused)

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

    if reports is not None:
        rs = reports.summary()
        rep = _table("Reports (reports.csv rows and DICOM SR objects)", "", "count")
        rep.add_row("studies with a report", f"{rs['with_report']} / {rs['studies']}")
        rep.add_row("coverage", f"{100 * rs['coverage']:.1f} %")
        rep.add_row("studies without a report", str(rs["without_report"]))
        rep.add_row("studies with an empty report", str(rs["empty_report"]))
        rep.add_row("studies with several reports", str(rs["duplicate_reports"]))
        rep.add_row("reports from reports.csv / from SR", f"{rs['from_csv']} / {rs['from_sr']}")
        rep.add_row("report keys matching no study", str(rs["keys_matching_no_study"]))
        rep.add_row("problems (rows, unreadable SR)", str(rs["problems"]))
        console.print(rep)
    if weak is not None:
        ws = weak.summary()
        wl = _table(f"Weak labels: '{escape(ws['finding'])}' ({escape(ws['labeler_version'])}, "
                    f"uncertain: {ws['uncertain']})", "", "studies")
        for assertion, n in ws["assertions"].items():
            wl.add_row(f"report says {assertion}", str(n))
        wl.add_row("labelled (positive / all)", f"{ws['positive_studies']} / {ws['labelled_studies']}")
        wl.add_row("left out as uncertain", str(ws["dropped_uncertain"]))
        wl.add_row("no report", str(ws["no_report"]))
        console.print(wl)


# --------------------------------------------------------------------------- synth


def cmd_synth(args: argparse.Namespace) -> int:
    from ai4hi_sdk.data.synth import synth_consortium
    from ai4hi_sdk.tasks.registry import task_strategy

    if args.sites < 1:
        raise UserError(f"--sites must be >= 1, got {args.sites}")
    if args.studies_per_site < 1:
        raise UserError(f"--studies-per-site must be >= 1, got {args.studies_per_site}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.drift_intensity is not None and not -1.0 <= args.drift_intensity <= 1.0:  # also refuses nan
        raise UserError(f"--drift-intensity must be a fraction of the full range in [-1, 1], got {args.drift_intensity}")
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
    if args.reports and args.task != "classification":
        raise UserError("--reports writes chest radiograph reports: use it with --task classification")
    sites = synth_consortium(
        args.out, sites=args.sites, task=args.task, studies_per_site=args.studies_per_site,
        seed=args.seed, drift=drift, manufacturers=vendors, overwrite=args.overwrite, reports=args.reports,
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
    console.print("Each site: dicom/ (Part 10 files), " + ", ".join(task_strategy(args.task).site_files)
                  + (", reports.csv and dicom/study-*/report-0001.dcm (SR), synthetic_report_truth.json"
                     if args.reports else ""))
    return 0

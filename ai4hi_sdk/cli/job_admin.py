"""``ai4hi job submit|status|wait|download|abort|list``: a consortium lead runs jobs on a real
deployment through their admin kit (NVFlare's Session API; see :mod:`ai4hi_sdk.deploy.admin`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _admin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", type=Path, required=True, help="your admin kit folder (from 'ai4hi provision')")
    parser.add_argument("--username", default=None, help="your e-mail in the consortium (default: the kit's)")
    parser.add_argument("--connect-timeout", type=float, default=15,
                        help="seconds to try reaching the server before giving up")


def register_admin_commands(commands: argparse._SubParsersAction) -> None:
    """Add the deployment sub-commands to the ``ai4hi job`` group."""
    submit = commands.add_parser("submit", help="build a job spec and submit it to the consortium server")
    submit.add_argument("spec", type=Path, help="job spec YAML (e.g. jobs/cxr_classification.yaml)")
    _admin_args(submit)
    submit.add_argument("--rounds", type=int, default=None, help="override train.rounds")
    submit.add_argument("--data-root", type=Path, default=None,
                        help="data root for sites that configure none themselves (sites normally do)")
    submit.add_argument("--initial-model", type=Path, default=None, metavar="STATE_DICT.pt",
                        help="warm start: ship this model (e.g. the deployed champion) as round 0's global model")
    submit.add_argument("--train-timeout", type=int, default=3600, help="seconds the server waits for a round")
    submit.add_argument("--sites-timeout", type=float, default=60,
                        help="wait this long for min_sites sites to be connected before submitting")
    submit.set_defaults(func=_submit)

    for name, func, helptext in (("status", _status, "show a job's status and progress"),
                                 ("wait", _wait, "wait for a job to finish, showing rounds done and sites"),
                                 ("abort", _abort, "abort a running job")):
        cmd = commands.add_parser(name, help=helptext)
        cmd.add_argument("job_id")
        _admin_args(cmd)
        if name == "wait":
            cmd.add_argument("--timeout", type=float, default=3600, help="give up waiting after this many seconds")
        cmd.set_defaults(func=func)

    download = commands.add_parser("download", help="download a finished job into OUT/result/ (as simulate writes)")
    download.add_argument("job_id")
    _admin_args(download)
    download.add_argument("--out", type=Path, required=True, help="folder to write result/ (and server/) into")
    download.set_defaults(func=_download)

    listing = commands.add_parser("list", help="list the consortium's jobs")
    _admin_args(listing)
    listing.set_defaults(func=_list)


def _session(args: argparse.Namespace):
    from ai4hi_sdk.deploy.admin import AdminSession

    return AdminSession(args.admin, username=args.username, timeout_s=args.connect_timeout)


def _submit(args: argparse.Namespace) -> int:
    from ai4hi_sdk.jobs.spec import load_checked_job_spec as load_job_spec
    from ai4hi_sdk.errors import UserError

    spec = load_job_spec(args.spec)
    if args.rounds is not None:
        if args.rounds < 1:
            raise UserError("--rounds must be at least 1")
        spec = spec.with_overrides(rounds=args.rounds)
    from ai4hi_sdk.jobs.simulate import check_secure_aggregation

    # secure aggregation cannot run on fewer than 3 sites: wait for them, refuse before submitting
    needed = max(spec.min_sites, 3) if spec.privacy.secure_aggregation is not None else spec.min_sites
    console = Console()
    with _session(args) as session:
        with console.status(f"waiting for {needed} sites to connect ..."):
            deadline = time.monotonic() + args.sites_timeout
            while len(connected := session.connected_sites()) < needed:
                if time.monotonic() > deadline:
                    check_secure_aggregation(spec, len(connected))
                    raise UserError(f"job '{spec.name}' needs {needed} sites but only {len(connected)} are "
                                    f"connected ({', '.join(connected) or 'none'}); start the sites first")
                time.sleep(1)
        check_secure_aggregation(spec, len(connected))
        prepare = None
        if args.initial_model is not None:  # warm start: ship the model in the job folder before submitting
            from functools import partial

            from ai4hi_sdk.jobs.builder import install_initial_model

            prepare = partial(install_initial_model, spec, initial_model=args.initial_model)
        job_id = session.submit(spec, data_root=args.data_root, train_timeout=args.train_timeout, prepare=prepare)
    console.print(f"submitted '{spec.name}' ({spec.train.rounds} rounds) to {', '.join(connected)}: job id")
    print(job_id)
    return 0


def _progress_line(progress) -> str:
    line = progress.status
    if progress.rounds_done is not None:
        line += f", round {progress.rounds_done}/{progress.rounds_total} done"
    if progress.sites_active is not None:
        line += f", sites active: {', '.join(progress.sites_active) or 'none'}"
    for refusal in progress.refused or []:
        line += f"; {refusal.site} refused round {refusal.round}: {refusal.reason}"
    return line


def _status(args: argparse.Namespace) -> int:
    with _session(args) as session:
        meta = session.job_meta(args.job_id)
        progress = session.progress(args.job_id)
        running = str(meta.get("status")) == "RUNNING"
        record = _live_record(session, args.job_id) if running else session.final_record(args.job_id)
    table = Table(title=f"job {args.job_id}")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key in ("name", "status", "submitter_name", "submit_time_iso", "start_time", "duration", "job_clients"):
        if key in meta:
            table.add_row(key, escape(str(meta[key])))
    table.add_row("progress", escape(_progress_line(progress)))
    console = Console()
    console.print(table)
    if record:
        _print_latest_round(console, record)
        _print_outcome(console, record)
    return 0


def _live_record(session, job_id: str):
    """The running job's record as the server has written it so far (None: none readable yet)."""
    from ai4hi_sdk.deploy.admin import RUN_METRICS_FILE
    from ai4hi_sdk.jobs.run_record import TrainingRunRecord

    raw = session.run_metrics(job_id)
    return TrainingRunRecord.load(raw, f"job {job_id}'s {RUN_METRICS_FILE}") if raw else None


def _print_latest_round(console: Console, record) -> None:
    """The consortium's metrics of the latest completed round: only what reached the server anyway
    (secure-aggregation consortium means, or the sites' validation of the global model)."""
    from ai4hi_sdk.deploy.results import latest_round_metrics

    latest = latest_round_metrics(record)
    if latest is None:
        return
    index, metrics = latest
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
    console.print(f"round {index} (latest completed), consortium: {escape(shown) or 'no metrics'}",
                  highlight=False, soft_wrap=True)


def _wait(args: argparse.Namespace) -> int:
    console = Console()
    last: dict = {}
    with _session(args) as session, console.status(f"job {args.job_id} ...") as status:

        def show(progress) -> None:
            if progress.rounds_done is not None:
                last["progress"] = progress
            status.update(f"job {args.job_id}: {escape(_progress_line(progress))}")

        meta = session.wait(args.job_id, timeout_s=args.timeout, on_progress=show)
        record = session.final_record(args.job_id)
    final = meta.get("status")
    seen = last.get("progress")
    if seen is not None:
        console.print(f"last progress seen: {escape(_progress_line(seen))}")
    if record is None:  # no ai4hi record readable: what the progress showed
        for refusal in (seen.refused if seen else None) or []:
            console.print(f"[yellow]{refusal.site} refused round {refusal.round} for policy reasons:[/] "
                          f"{escape(refusal.reason)}")
        ok = final == "FINISHED:COMPLETED"
    else:
        ok = final == "FINISHED:COMPLETED" and _print_outcome(console, record)
    console.print(f"job {args.job_id} {'[green]' if ok else '[red]'}{final}[/]"
                  + (f", ai4hi status {escape(record.status)}" if record else "")
                  + f"; results: 'ai4hi job download {args.job_id} --admin {args.admin} --out DIR'")
    return 0 if ok else 1


def _print_outcome(console: Console, record) -> bool:
    """Each site's refusals/rejections with its real privacy state; a line if no site trained.
    True if the job's own record (a :class:`~ai4hi_sdk.jobs.run_record.TrainingRunRecord`) says it
    completed and some site trained."""
    from ai4hi_sdk.deploy.results import describe_site_privacy, no_site_trained, site_outcomes

    for site, outcome in site_outcomes(record).items():
        for refusal in outcome["refused"]:
            console.print(f"[yellow]{escape(site)} refused round {refusal.round}:[/] "
                          f"{escape(refusal.reason)}; {escape(describe_site_privacy(outcome['privacy']))}",
                          highlight=False)
        for rejected in outcome["rejected"]:
            console.print(f"[yellow]{escape(site)}'s update of round {rejected.round} was rejected:[/] "
                          f"{escape(rejected.reason)}", highlight=False)
        if not outcome["refused"] and outcome["privacy"]["epsilon_spent"] is not None:
            console.print(f"privacy: {escape(site)}: {escape(describe_site_privacy(outcome['privacy']))}",
                          highlight=False)
    nobody = no_site_trained(record)
    if nobody:
        console.print(f"[bold red]no site trained[/]: every site refused, was rejected or dropped out "
                      f"({escape(record.reason or '')})", highlight=False)
    return record.status == "completed" and not nobody


def _download(args: argparse.Namespace) -> int:
    console = Console()
    with _session(args) as session, console.status(f"downloading job {args.job_id} ..."):
        metrics = session.download_result(args.job_id, args.out)
    from ai4hi_sdk.jobs.run_record import TrainingRunRecord

    record = TrainingRunRecord.load(metrics, str(Path(args.out) / "result" / "metrics.json"))
    console.print(f"job {args.job_id}: {record.status} ({escape(record.reason or '')}), "
                  f"{len(record.completed_rounds())} rounds completed with sites {', '.join(record.sites)}")
    ok = _print_outcome(console, record)
    result = Path(args.out).resolve() / "result"
    console.print(f"results: {result} (global_model.pt, metrics.json, receipts.jsonl); server logs: "
                  f"{Path(args.out).resolve() / 'server'}")
    return 0 if ok else 1


def _abort(args: argparse.Namespace) -> int:
    with _session(args) as session:
        session.abort(args.job_id)
    Console().print(f"abort requested for job {args.job_id}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _session(args) as session:
        jobs = session.list_jobs()
    table = Table(title="jobs")
    for column in ("job id", "name", "status", "submitter", "submitted"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(job.get("job_id", ""), job.get("name", ""), job.get("status", ""),
                      job.get("submitter_name", ""), str(job.get("submit_time_iso", "")))
    Console().print(table)
    return 0

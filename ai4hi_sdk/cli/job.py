"""``ai4hi job``: build, export and simulate federated jobs from a job spec."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ai4hi_sdk.jobs.wire import METRICS_FILE


def load_job_spec(path: Path):
    """The checked job spec (imported lazily: the trainer check imports torch)."""
    from ai4hi_sdk.jobs.spec import load_checked_job_spec

    return load_checked_job_spec(path)


def register(groups: argparse._SubParsersAction) -> None:
    job = groups.add_parser("job", help="build, export and simulate federated jobs")
    commands = job.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    sim = commands.add_parser("simulate", help="run a job in the NVFlare simulator on local site folders")
    sim.add_argument("spec", type=Path, help="job spec YAML (e.g. jobs/cxr_classification.yaml)")
    sim.add_argument("--data-root", type=Path, required=True, help="folder with one sub-folder per site")
    sim.add_argument("--workspace", type=Path, required=True, help="where the job, logs and result/ are written")
    sim.add_argument("--sites", type=int, default=None, help="use only the first N sites")
    sim.add_argument("--rounds", type=int, default=None, help="override train.rounds")
    sim.add_argument("--timeout", type=float, default=1800, help="kill the simulator after this many seconds")
    sim.add_argument("--site-policy", type=Path, default=None,
                     help="privacy policy YAML to install at every simulated site (default: keep a site's "
                          "own, else the SDK default: DP-SGD required, epsilon <= 10 per dataset)")
    sim.add_argument("--drop", default=None, metavar="SITE:STAGE[@ROUND]",
                     help="secure aggregation fault injection (tests, demos): drop a site at a protocol stage, "
                          "e.g. hospital-2:after-shares (stages: after-advertise, after-shares, after-input); "
                          "comma-separate several")
    sim.add_argument("--initial-model", type=Path, default=None, metavar="STATE_DICT.pt",
                     help="warm start: start round 0 from this model (torch.save of a state dict of the job's "
                          "architecture, e.g. a previous result's global model) instead of the seeded one")
    sim.add_argument("--checkpoint", type=Path, default=None, metavar="BACKBONE_DIR",
                     help="base checkpoint: set the spec's model.checkpoint to this backbone folder (e.g. a "
                          "pretraining job's result/backbone); simulated sites get it in their backbone store")
    sim.add_argument("--json", action="store_true", help="print the result record as JSON")
    sim.set_defaults(func=_simulate)

    exp = commands.add_parser("export", help="write the NVFlare job folder a lead can submit")
    exp.add_argument("spec", type=Path)
    exp.add_argument("--out", type=Path, required=True, help="folder to write the job into")
    exp.add_argument("--data-root", type=Path, default=None,
                     help="default data root for sites that do not set AI4HI_DATA_ROOT themselves")
    exp.add_argument("--initial-model", type=Path, default=None, metavar="STATE_DICT.pt",
                     help="warm start: ship this model as the job's round-0 global model")
    exp.add_argument("--checkpoint", type=Path, default=None, metavar="BACKBONE_DIR",
                     help="base checkpoint: set the spec's model.checkpoint to this backbone folder; the job "
                          "carries only its sha256, each site installs the folder with 'ai4hi site add-backbone'")
    exp.add_argument("--overwrite", action="store_true",
                     help="replace an earlier export of a different job with the same name in --out "
                          "(an export of the same job is always replaced; a folder that is not an export never)")
    exp.set_defaults(func=_export)
    __import__("ai4hi_sdk.cli.job_admin", fromlist=["_"]).register_admin_commands(commands)  # deployment commands


def _simulate(args: argparse.Namespace) -> int:
    from ai4hi_sdk.errors import UserError
    from ai4hi_sdk.jobs.simulate import simulate

    spec = with_checkpoint(load_job_spec(args.spec), args.checkpoint)
    if args.rounds is not None:
        if args.rounds < 1:
            raise UserError("--rounds must be at least 1")
        spec = spec.with_overrides(rounds=args.rounds)
    console = Console(stderr=args.json)
    with console.status(f"simulating '{spec.name}' ({spec.train.rounds} rounds) ...") as status:

        def progress(run_dir: Path) -> None:
            record = _read_record(run_dir / METRICS_FILE)
            if record is not None:
                status.update(f"simulating '{spec.name}': round {len(record.completed_rounds())}/{spec.train.rounds} "
                              f"done, {len(record.sites)} sites")

        result = simulate(spec, args.data_root, args.workspace, n_sites=args.sites, timeout_s=args.timeout,
                          site_policy=args.site_policy, on_poll=progress, drops=args.drop,
                          initial_model=args.initial_model)
    record = result.run_record
    if args.json:
        print(json.dumps(result.metrics, indent=2, sort_keys=True))
    else:
        print_summary(console, record, result.result_dir, result.seconds, task=spec.task)
        print_code_hash(console, spec)
    if not result.ok:
        console.print(f"[red]job did not complete:[/] {record.reason or 'unknown'} "
                      f"(log: {args.workspace / 'simulate.log'})")
        if record.previous_results_kept:
            console.print(f"the previous results are kept in {record.previous_results_kept}; "
                          f"this run's record: {result.result_dir}")
        return 1
    return 0


def print_summary(console: Console, metrics: Any, result_dir: Path, seconds: float, *,
                  task: str = "classification") -> None:
    """Rounds, per-site validation metrics of the final model (the columns of the job's ``task``
    kind), the global metric, where results are. ``metrics``: the run record
    (:class:`~ai4hi_sdk.jobs.run_record.TrainingRunRecord`, or its JSON form)."""
    from ai4hi_sdk.jobs.run_record import ValidationSummary, as_training_record
    from ai4hi_sdk.tasks.registry import task_strategy

    record = as_training_record(metrics)
    rounds = record.completed_rounds()
    console.print(f"[bold]{len(rounds)}[/] rounds completed with sites {', '.join(record.sites)} "
                  f"in {seconds:.1f} s (status: {record.status})")
    final = record.final_validation or ValidationSummary()
    table = Table(title="final global model, validated at each site (validation split)")
    names = list(task_strategy(task).summary_columns)
    table.add_column("site")
    for name in names:
        table.add_column(name, justify="right")
    for site, values in sorted(final.sites.items()):
        table.add_row(site, *[_fmt(values.get(n)) for n in names])
    mean = final.weighted_mean
    if mean:
        table.add_row("[bold]all (weighted)[/]", *[_fmt(mean.get(n)) for n in names])
    console.print(table)
    if rounds:
        last = rounds[-1]
        train = {s: m.get("train_loss") for s, m in last.sites.items() if m.get("train_loss") is not None}
        if train:
            console.print("last round training loss: " + ", ".join(f"{s} {_fmt(v)}" for s, v in sorted(train.items())))
        if last.consortium_metrics is not None:  # secure aggregation: the server only knows sums
            consortium = last.consortium_metrics
            console.print(f"secure aggregation: last round mean training loss {_fmt(consortium.get('train_loss'))} "
                          f"over {len(last.sites)} sites (no site's own figures left it); "
                          f"dropped: {', '.join(last.dropped or []) or 'none'}; "
                          f"quantisation error bound {_fmt(last.quantisation_error_bound)}")
    exchange = record.exchange
    if exchange:
        console.print(f"upload per round and site: {int(exchange.tensors)} tensors, {int(exchange.elements)} "
                      f"values ({exchange.percent:.3g} % of the model's {int(exchange.full_model_elements)})")
    backbone = record.backbone
    if backbone:
        console.print(f"pretrained backbone {backbone['version']}: {result_dir / backbone['folder']} "
                      f"(sha256 {backbone['sha256']}, card: BACKBONE_CARD.md)", highlight=False)
    agreement = record.label_agreement
    if agreement:  # jobs with labels from reports: aggregates of k or more studies per site
        console.print("weak labels agree with hand labels: " + ", ".join(
            f"{s} {_fmt(a.get('weak_label_agreement'))} ({int(a['weak_label_studies'])} studies)"
            for s, a in sorted(agreement.sites.items())) + f"; pooled {_fmt(agreement.pooled_agreement)}")
    for site, privacy in sorted((record.privacy or {}).items()):
        for dataset, spent in privacy.datasets.items():
            console.print(f"privacy: {site} dataset {dataset}: epsilon {spent.epsilon_spent:.3g} spent "
                          f"(delta {spent.delta}), {spent.rounds} rounds, {spent.refused} refused, "
                          f"ledger chain {'ok' if privacy.chain_ok else 'BROKEN'}")
    for refusal in record.refused:
        console.print(f"[yellow]{refusal.site} refused round {refusal.round}:[/] {refusal.reason}")
    console.print(f"results: {result_dir} (global_model.pt, metrics.json, egress/, privacy/)")


def with_checkpoint(spec, checkpoint: Path | None):
    """``spec`` with ``model.checkpoint`` set to ``checkpoint`` (resolved from the current folder);
    a sha256 the spec pins must still match it (checked when the job is built)."""
    if checkpoint is None:
        return spec
    return spec.model_copy(update={"model": {**spec.model, "checkpoint": str(Path(checkpoint).resolve())}})


def _export(args: argparse.Namespace) -> int:
    spec = with_checkpoint(load_job_spec(args.spec), args.checkpoint)
    job_dir, digest = export_safely(spec, args.out, data_root=args.data_root,
                                    initial_model=args.initial_model, overwrite=args.overwrite)
    if digest is not None:
        Console().print(f"warm start from {args.initial_model} (sha256 {digest[:12]}...)")
    Console().print(f"exported NVFlare job '{job_dir.name}' to {job_dir}")
    print_code_hash(Console(), spec)
    base = (_exported_spec(job_dir) or {}).get("model", {}).get("checkpoint_sha256")
    if base:
        Console().print(f"base checkpoint sha256 {base}: every site installs the backbone folder once with "
                        f"`ai4hi site add-backbone KIT {args.checkpoint or spec.model.get('checkpoint')}` (a site "
                        "without it refuses the job)", highlight=False)
    return 0


def _exported_spec(job_dir: Path) -> dict | None:
    """The job spec inside an earlier ai4hi export (the site executor's ``job`` argument), or None
    if ``job_dir`` is not one."""
    for config in sorted(job_dir.glob("*/config/config_fed_client.json")):
        try:
            executors = json.loads(config.read_text()).get("executors") or []
            executor = executors[0]["executor"]
            if executor.get("path", "").startswith("ai4hi_sdk."):
                return executor["args"]["job"]
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
    return None


def export_safely(spec, out: Path, *, data_root: Path | None = None, initial_model: Path | None = None,
                  overwrite: bool = False) -> tuple[Path, str | None]:
    """Export ``spec`` to ``out/<name>`` (and ship ``initial_model``) without losing anything: the
    job is built and warm-started in a staging folder beside it and swapped in only when complete,
    so a failure keeps an earlier export intact. Refuses (UserError) an ``out`` that is a file, a
    ``out/<name>`` that is not an ai4hi export, and (unless ``overwrite``) an export of another
    job of the same name. Returns the job folder and the initial model's sha256 (or None)."""
    import os
    import shutil
    import uuid

    from ai4hi_sdk.errors import UserError
    from ai4hi_sdk.jobs.builder import export_job, install_initial_model, spec_payload

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file, not a folder; give a folder to write the job into")
    target = out / spec.name
    if target.exists():
        earlier = _exported_spec(target) if target.is_dir() else None
        if earlier is None:
            raise UserError(f"'{target}' exists and is not an ai4hi job export; nothing was written: choose "
                            "another --out, or move it away")
        if earlier != spec_payload(spec) and not overwrite:
            raise UserError(f"'{target}' holds an export of another job named '{spec.name}' (its spec differs); "
                            "nothing was written: choose another --out, or replace it with --overwrite")
    if initial_model is not None and not Path(initial_model).is_file():
        raise UserError(f"initial model '{initial_model}' not found")
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".ai4hi-export-{uuid.uuid4().hex[:12]}"
    try:
        job_dir = export_job(spec, staging, data_root=data_root)
        digest = install_initial_model(spec, job_dir, initial_model) if initial_model is not None else None
        previous = staging / ".previous"
        if target.exists():
            os.replace(target, previous)
        os.replace(job_dir, target)
    finally:
        if not target.exists() and (staging / ".previous").exists():
            os.replace(staging / ".previous", target)  # the swap failed half-way: put the earlier export back
        shutil.rmtree(staging, ignore_errors=True)
    return target, digest


def print_code_hash(console: Console, spec) -> None:
    """The SHA-256 of the job's custom code: what each site admin must allow before it runs."""
    from ai4hi_sdk.jobs.builder import code_sha256

    digest = code_sha256(spec)
    if digest:
        console.print(f"custom code sha256 {digest}: each site runs it only after its admin allows it "
                      f"(`ai4hi site allow-code KIT {digest}`)", highlight=False, soft_wrap=True)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def _read_record(path: Path) -> Any:
    """The run record the server has written so far (None: none yet, or not readable: progress only)."""
    from ai4hi_sdk.errors import UserError
    from ai4hi_sdk.jobs.run_record import TrainingRunRecord

    try:
        return TrainingRunRecord.read(path)
    except UserError:
        return None

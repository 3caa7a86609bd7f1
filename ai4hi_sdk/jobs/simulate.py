"""Run an ai4hi job in the NVFlare simulator and collect its results into ``WS/result/``.

The simulator runs as a child process in its own session (``nvflare simulator``), with every
path it writes redirected under the workspace. NVFlare's simulator has no timeout of its own, so
this module waits with one and kills the whole process tree (psutil) when it expires. SIGTERM and
SIGHUP (also coreutils ``timeout``) to the waiting process do the same: the simulator sits in its
own session, so nothing else stops it, and NVFlare starts each site in yet another session. Every
process of a run carries a marker in its environment, so :func:`kill_process_tree` also finds one
that was re-parented away from the tree.

Workspace layout::

    WS/job/<name>/            the exported NVFlare job that was simulated
    WS/simulate/              the simulator's workspace (server/ and one folder per site)
    WS/simulate.log           the simulator's output
    WS/result/global_model.pt final global model (state dict of float tensors); a new run replaces
                              WS/result only when it completed (written beside it, then swapped in);
                              a failed run's record goes to WS/result.failed and the previous
                              results stay (a failed run in a fresh workspace writes WS/result)
    WS/result/metrics.json    per round: per-site training/validation metrics, global validation;
                              ``initial_model``: source and sha256 of the round-0 global model
                              (:class:`~ai4hi_sdk.jobs.run_record.TrainingRunRecord`;
                              reference: docs/reference/metrics-json.md)
    WS/result/egress/<site>.jsonl   copy of each site's hash-chained egress log
    WS/result/receipts.jsonl  what the server received (descriptions only)
    WS/result/tensorboard/    round metrics the server streamed to TensorBoard during the job
                              (live: ``tensorboard --logdir WS/simulate/server/simulate_job/tensorboard``)
    WS/result/backbone/       a pretraining job's output: backbone.safetensors, provenance.json
                              (with the card), BACKBONE_CARD.md
    WS/sites/<site>/ai4hi/    each site's own state, kept across simulations: site_policy.yaml,
                              privacy budget state, privacy_ledger.jsonl, egress_log.jsonl,
                              backbones/<sha256>/ (base checkpoints, installed where missing)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.jobs.builder import base_checkpoint, export_job, install_initial_model
from ai4hi_sdk.jobs.live_metrics import TENSORBOARD_DIR
from ai4hi_sdk.jobs.run_record import DatasetPrivacy, SitePrivacy, TrainingRunRecord
from ai4hi_sdk.jobs.signals import STOP_SIGNALS, Terminated, stop_signals_raise  # noqa: F401 (re-exported)
from ai4hi_sdk.jobs.wire import BACKBONE_RESULT_DIR, METRICS_FILE, MODEL_FILE, RECEIPT_LOG
from ai4hi_sdk.site.egress_guard import EGRESS_LOG
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.config.site_policy import SITE_POLICY, load_site_policy
from ai4hi_sdk.site_paths import SITE_WORKSPACE_ROOT_ENV
from ai4hi_sdk.trainers.site_trainer import TORCH_THREADS_ENV

SIM_JOB_ID = "simulate_job"  # the run folder name NVFlare's simulator uses
#: environment marker carried by every process of one simulator run (value unique per run)
RUN_MARKER_ENV = "AI4HI_SIMULATOR_RUN"
@dataclass
class SimulationResult:
    """Where a simulation's results are and how it ended.

    Attributes:
        metrics: the run record as written to ``metrics.json`` (JSON form); :attr:`run_record` reads it.
    """

    result_dir: Path
    metrics: dict
    return_code: int
    seconds: float

    @property
    def run_record(self) -> TrainingRunRecord:
        """The run record, typed (raises RecordError naming the field if it does not match)."""
        return TrainingRunRecord.load(self.metrics, str(self.result_dir / "metrics.json"))

    @property
    def ok(self) -> bool:
        return self.return_code == 0 and self.run_record.status == "completed"


def discover_sites(data_root: Path) -> list[str]:
    """Site folders under ``data_root``: sub-folders holding a ``labels.csv`` or a ``dicom/`` folder."""
    if not data_root.is_dir():
        raise UserError(f"data root '{data_root}' is not a folder")
    sites = sorted(p.name for p in data_root.iterdir()
                   if p.is_dir() and ((p / "labels.csv").is_file() or (p / "dicom").is_dir()))
    if not sites:
        raise UserError(f"no site folders (with labels.csv or dicom/) under '{data_root}'; "
                        "create some with 'ai4hi data synth'")
    return sites


def simulator_env(workspace: Path, n_sites: int) -> dict[str, str]:
    """Environment for the simulator child: caches and temp files inside the workspace, and the
    machine's cores shared between the simulated sites."""
    env = dict(os.environ)
    env.setdefault(TORCH_THREADS_ENV, str(max(1, (os.cpu_count() or 1) // n_sites)))
    env[SITE_WORKSPACE_ROOT_ENV] = str(workspace / "sites")
    tmp = workspace / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(
        TMPDIR=str(tmp),
        TORCHINDUCTOR_CACHE_DIR=str(workspace / "cache" / "torchinductor"),
        MPLCONFIGDIR=str(workspace / "cache" / "matplotlib"),
        NVFLARE_SIMULATOR_WORKSPACE_ROOT=str(workspace / "simulate"),
        PYTHONUNBUFFERED="1",
    )
    return env


DEFAULT_SITE_POLICY = Path(__file__).resolve().parents[1] / "templates" / "site_policy.yaml"


def install_site_policies(workspace: Path, sites: list[str], policy: str | Path | None) -> dict[str, str]:
    """Give every simulated site a privacy policy in ``WS/sites/<site>/ai4hi/site_policy.yaml``.

    An explicitly given ``policy`` file is validated and installed at every site; otherwise a site
    that has none gets the SDK's default (DP-SGD required, epsilon <= 10 per dataset) and a site
    that has one keeps it. Returns site -> what happened, for the run record.
    """
    source = Path(policy) if policy is not None else DEFAULT_SITE_POLICY
    load_site_policy(source)  # fail early, naming the file and field, if it is invalid
    actions = {}
    for site in sites:
        target = workspace / "sites" / site / SITE_POLICY
        if target.exists() and policy is None:
            actions[site] = f"kept {target}"
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        actions[site] = f"installed {source}"
    return actions


def install_site_backbones(spec: JobSpec, sites_root: Path, sites: list[str]) -> dict[str, str]:
    """Give every simulated site the job's base checkpoint in its store
    (``sites_root/<site>/ai4hi/backbones/<sha256>/``), as its admin would with ``ai4hi site
    add-backbone``; a site that already holds files under that sha256 keeps them, whatever their
    bytes (a site's state is its own: the site verifies them before round 0). Returns site -> what
    happened; empty for a job without a base checkpoint."""
    from ai4hi_sdk.site.backbones import install_backbone, is_installed

    found = base_checkpoint(spec)
    if found is None:
        return {}
    folder, sha = found
    actions = {}
    for site in sites:
        if is_installed(sites_root / site, sha):
            actions[site] = f"kept the site's backbone {sha[:12]}..."
        else:
            install_backbone(folder, sites_root / site, expected_sha256=sha)
            actions[site] = f"installed backbone {sha[:12]}... from {folder}"
    return actions


def _marked(marker: str) -> list[psutil.Process]:
    """This user's processes whose environment carries ``RUN_MARKER_ENV=marker``."""
    found, me = [], os.getuid()
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] is not None and proc.info["uids"].real == me \
                    and proc.environ().get(RUN_MARKER_ENV) == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_process_tree(pid: int | None, marker: str | None = None) -> None:
    """Kill ``pid`` (None: a process already reaped), all its descendants and (with ``marker``)
    every process of this user carrying the run's marker (only processes we started).

    The tree is frozen first (SIGSTOP, parents before children, walked until no new process
    appears) so that nothing forks or re-parents a child while it is being killed."""
    procs: dict[int, psutil.Process] = {}
    try:
        frontier = [psutil.Process(pid)] if pid is not None else []
    except psutil.NoSuchProcess:
        frontier = []
    for _ in range(5):  # walk again: a process may have forked before its SIGSTOP landed
        if marker:
            frontier += [p for p in _marked(marker) if p.pid not in procs]
        grew = False
        while frontier:
            proc = frontier.pop()
            if proc.pid in procs:
                continue
            procs[proc.pid] = proc
            grew = True
            try:
                proc.suspend()
                frontier.extend(proc.children())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        for proc in list(procs.values()):
            try:
                frontier.extend(c for c in proc.children() if c.pid not in procs)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if not grew and not frontier:
            break
    for proc in procs.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(procs.values()), timeout=10)


def run_simulator(job_dir: Path, sim_workspace: Path, sites: list[str], log_path: Path, env: dict[str, str],
                  timeout_s: float, on_poll: Callable[[], None] | None = None) -> int:
    """Run ``nvflare simulator`` on ``job_dir``; return its exit code (124 on timeout)."""
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job_dir), "-w", str(sim_workspace),
           "-c", ",".join(sites), "-t", str(len(sites))]
    return run_process_tree(cmd, log_path, env, timeout_s, cwd=sim_workspace.parent, on_poll=on_poll)


def run_process_tree(cmd: list[str], log_path: Path, env: dict[str, str], timeout_s: float, *, cwd: Path,
                     on_poll: Callable[[], None] | None = None) -> int:
    """Run ``cmd`` in its own session and wait; return its exit code, 124 after ``timeout_s``.

    On timeout, on any exception in the caller's thread (KeyboardInterrupt) and on SIGTERM/SIGHUP
    (raised as :class:`Terminated`), the whole tree is killed before returning or re-raising."""
    env = {**env, RUN_MARKER_ENV: env.get(RUN_MARKER_ENV) or uuid.uuid4().hex}
    marker = env[RUN_MARKER_ENV]
    proc: subprocess.Popen | None = None
    main_thread = threading.current_thread() is threading.main_thread()
    with stop_signals_raise(), open(log_path, "w") as log:
        try:
            # a stop signal while Popen forks must not leave an orphan: note it, deliver it once proc
            # is known (blocking the signals instead would hand the blocked mask on to the simulator)
            deferred: list[int] = []
            previous = {sig: signal.signal(sig, lambda signum, _f: deferred.append(signum))
                        for sig in STOP_SIGNALS} if main_thread else {}
            try:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, cwd=str(cwd))
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            if deferred:
                signal.raise_signal(deferred[0])  # now to the real handler (ours raises Terminated)
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    kill_process_tree(proc.pid, marker)
                    return 124
                if on_poll:
                    on_poll()
                time.sleep(0.5)
        except BaseException:
            if proc is not None:  # a reaped pid may belong to another program by now: marker only
                kill_process_tree(proc.pid if proc.returncode is None else None, marker)
            raise
    kill_process_tree(None, marker)  # a site process the simulator left behind
    return proc.returncode


def collect_results(workspace: Path, sites: list[str], return_code: int, extra: dict | None = None,
                    result: Path | None = None) -> dict:
    """Copy model, metrics and logs from the simulator workspace into ``result`` (default
    ``WS/result``) and return the metrics record (with pointers to the egress logs)."""
    sim, result = workspace / "simulate", result or workspace / "result"
    result.mkdir(parents=True, exist_ok=True)
    run_dir = sim / "server" / SIM_JOB_ID
    metrics_src = run_dir / METRICS_FILE
    record = TrainingRunRecord.read(metrics_src) if metrics_src.exists() else TrainingRunRecord(
        status="failed", reason=f"the simulator ended (exit code {return_code}) before the job wrote results")
    if return_code not in (0, None) and record.status in ("running", "completed"):
        record.status = "failed"
        record.reason = f"simulator exit code {return_code}" + (" (timed out)" if return_code == 124 else "")
    if (run_dir / MODEL_FILE).exists():
        shutil.copy2(run_dir / MODEL_FILE, result / MODEL_FILE)
        record.global_model = MODEL_FILE
    if (run_dir / RECEIPT_LOG).exists():
        shutil.copy2(run_dir / RECEIPT_LOG, result / "receipts.jsonl")
        record.receipt_log = "receipts.jsonl"
    if (run_dir / TENSORBOARD_DIR).is_dir():  # round metrics the server streamed during the job
        shutil.copytree(run_dir / TENSORBOARD_DIR, result / TENSORBOARD_DIR, dirs_exist_ok=True)
        record.tensorboard = TENSORBOARD_DIR
    if (run_dir / BACKBONE_RESULT_DIR).is_dir():
        shutil.copytree(run_dir / BACKBONE_RESULT_DIR, result / BACKBONE_RESULT_DIR, dirs_exist_ok=True)
    record.egress_logs = {}
    for site in sites:
        src = workspace / "sites" / site / EGRESS_LOG
        if src.exists():
            (result / "egress").mkdir(exist_ok=True)
            shutil.copy2(src, result / "egress" / f"{site}.jsonl")
            record.egress_logs[site] = {"copy": f"egress/{site}.jsonl", "site_log": str(src)}
        ledger = workspace / "sites" / site / PRIVACY_LEDGER
        if ledger.exists():
            (result / "privacy").mkdir(exist_ok=True)
            shutil.copy2(ledger, result / "privacy" / f"{site}.jsonl")
            if record.privacy is None:
                record.privacy = {}
            record.privacy[site] = _privacy_summary(ledger)
    metrics = {**record.to_json_dict(), **(extra or {})}
    record = TrainingRunRecord.load(metrics, "the simulation's extra record fields")  # extra: typed too
    (result / "metrics.json").write_text(record.to_json())
    return record.to_json_dict()


def _privacy_summary(ledger_path: Path) -> SitePrivacy:
    """Per-site privacy summary for the lead: epsilon spent per dataset (from the site's ledger,
    whose chain is verified), rounds spent and refused."""
    ledger = PrivacyLedger(ledger_path)
    check = ledger.verify()
    return SitePrivacy(ledger=f"privacy/{ledger_path.parent.parent.name}.jsonl", chain_ok=check.ok, datasets={
        name: DatasetPrivacy(epsilon_spent=summary.spent, rounds=summary.rounds, refused=summary.refused,
                             delta=summary.delta)
        for name, summary in ledger.summary().items()})


def write_simulated_local_config(sim_workspace: Path, sites: list[str]) -> None:
    """A class allow list for the simulator (``local/resources.json``, which it copies to the server
    and every site): the SDK's server and site classes on top of NVFlare's defaults. The simulator
    has one list for everybody; a provisioned site admits only the site runtime's classes."""
    from ai4hi_sdk.provision.provision import SITE_CLASSES, _allow_server_classes

    resources: dict = {}
    _allow_server_classes(resources)
    resources["class_allow_list"] += [c for c in SITE_CLASSES if c not in resources["class_allow_list"]]
    local = sim_workspace / "local"
    local.mkdir(parents=True, exist_ok=True)
    (local / "resources.json").write_text(json.dumps(resources, indent=2))


def simulate_job_dir(job_dir: str | Path, workspace: str | Path, sites: list[str], *, timeout_s: float = 1800,
                     sites_root: str | Path | None = None,
                     on_poll: Callable[[Path], None] | None = None,
                     extra_env: dict[str, str] | None = None) -> int:
    """Run an already-built NVFlare job folder in the simulator, every path redirected under
    ``workspace`` (``WS/simulate/``, ``WS/simulate.log``, caches, temp files). Sites keep their state
    in ``sites_root/<site>`` (default ``WS/sites``). Returns the simulator's exit code (124: killed
    after ``timeout_s``); ``on_poll`` gets the server run folder about twice a second."""
    workspace = Path(workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    env = simulator_env(workspace, len(sites))
    if sites_root is not None:
        env[SITE_WORKSPACE_ROOT_ENV] = str(Path(sites_root).resolve())
    env.update(extra_env or {})
    run_dir = workspace / "simulate" / "server" / SIM_JOB_ID
    write_simulated_local_config(workspace / "simulate", sites)
    return run_simulator(Path(job_dir), workspace / "simulate", sites, workspace / "simulate.log", env, timeout_s,
                         on_poll=(lambda: on_poll(run_dir)) if on_poll else None)


def check_secure_aggregation(spec: JobSpec, n_sites: int) -> None:
    """Refuse up front a secure-aggregation job that cannot run on ``n_sites`` sites (fewer than 3,
    a threshold above the neighbourhood, an overflowing sum), instead of failing inside NVFlare."""
    from ai4hi_sdk.privacy.secagg.settings import protocol_config

    if spec.privacy.secure_aggregation is None:
        return
    try:
        protocol_config(spec.privacy.secure_aggregation).validate_for(n_sites)
    except ValueError as err:
        raise UserError(f"job '{spec.name}' uses secure aggregation, which cannot run on {n_sites} sites: {err}") \
            from None


def _check_run_options(n_sites: int | None, timeout_s: float) -> None:
    if n_sites is not None and (isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1):
        raise UserError(f"--sites must be a whole number >= 1, got {n_sites}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) \
            or timeout_s <= 0:
        raise UserError(f"--timeout must be a finite number of seconds > 0, got {timeout_s}")


def simulate(spec: JobSpec, data_root: str | Path, workspace: str | Path, *, sites: list[str] | None = None,
             n_sites: int | None = None, timeout_s: float = 1800, site_policy: str | Path | None = None,
             on_poll: Callable[[Path], None] | None = None, drops: str | None = None,
             initial_model: str | Path | None = None) -> SimulationResult:
    """Export ``spec`` as an NVFlare job, run it in the simulator over the site folders of
    ``data_root`` and collect the results (see the module docstring for the layout).

    Every option is checked (and the job built and warm-started in a staging folder) before
    anything already in ``workspace`` is changed: a bad option raises :class:`UserError` and leaves
    the workspace as it was. A run replaces ``WS/result`` only when it completed.

    Args:
        sites: site names (sub-folders of ``data_root``); default: all discovered sites.
        n_sites: use only the first ``n_sites`` discovered sites.
        timeout_s: wall-clock limit; the simulator's process tree is killed past it.
        site_policy: privacy policy file to install at every simulated site (see
            :func:`install_site_policies`); sites keep their state (policy, privacy budget, ledger,
            egress log) in ``WS/sites/<site>/ai4hi/`` across simulations, as real sites do.
        on_poll: called about twice a second with the server run folder (for progress display).
        drops: secure-aggregation fault injection, ``"SITE:STAGE[@ROUND],..."`` with STAGE one of
            ``after-advertise``, ``after-shares``, ``after-input`` (tests and demos).
        initial_model: warm start: a state dict file (``torch.save``) of the job's architecture,
            e.g. the deployed champion's ``global_model.pt``, used as the round-0 global model
            instead of the seeded one (see :func:`install_initial_model`).
    """
    data_root, workspace = Path(data_root).resolve(), Path(workspace).resolve()
    # 1. every option, before anything in the workspace is touched
    _check_run_options(n_sites, timeout_s)
    chosen = sites or discover_sites(data_root)
    if n_sites is not None:
        if n_sites > len(chosen):
            raise UserError(f"--sites {n_sites} requested but only {len(chosen)} sites under '{data_root}'")
        chosen = chosen[:n_sites]
    if len(chosen) < spec.min_sites:
        raise UserError(f"job '{spec.name}' needs at least {spec.min_sites} sites (min_sites), got {len(chosen)}")
    check_secure_aggregation(spec, len(chosen))
    load_site_policy(Path(site_policy) if site_policy is not None else DEFAULT_SITE_POLICY)
    _check_drops(spec, chosen, drops)
    if workspace.exists() and not workspace.is_dir():
        raise UserError(f"--workspace '{workspace}' is a file, not a folder")
    # 2. the job, built and warm-started beside the previous run's (checks the initial model)
    workspace.mkdir(parents=True, exist_ok=True)
    staging = workspace / f".ai4hi-staging-{uuid.uuid4().hex[:12]}"
    try:
        job_dir = export_job(spec, staging / "job", data_root=data_root)
        extra: dict = {}
        if initial_model is not None:
            extra["initial_model_file"] = str(Path(initial_model).resolve())
            extra["initial_model_file_sha256"] = install_initial_model(spec, job_dir, initial_model)
        # 3. the run: it replaces the previous job and simulator workspace, not the previous results
        for stale in ("job", "simulate"):
            shutil.rmtree(workspace / stale, ignore_errors=True)
        os.replace(staging / "job", workspace / "job")
        job_dir = workspace / "job" / job_dir.name
        extra["site_policies"] = install_site_policies(workspace, chosen, site_policy)
        backbones = install_site_backbones(spec, workspace / "sites", chosen)
        if backbones:
            extra["site_backbones"] = backbones
        extra_env = _secure_aggregation_setup(spec, workspace, chosen, drops)
        started = time.monotonic()
        code = simulate_job_dir(job_dir, workspace, chosen, timeout_s=timeout_s, on_poll=on_poll,
                                extra_env=extra_env)
        metrics = collect_results(workspace, chosen, code, extra=extra, result=staging / "result")
        result = SimulationResult(staging / "result", metrics, code, time.monotonic() - started)
        result.result_dir = _publish(workspace, staging / "result", result.ok)
        if result.result_dir.name == FAILED_RESULT:  # the record there names the results kept
            result.metrics = TrainingRunRecord.read(result.result_dir / "metrics.json").to_json_dict()
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


FAILED_RESULT = "result.failed"


def _publish(workspace: Path, new: Path, ok: bool) -> Path:
    """Move a run's results ``new`` into place: ``WS/result`` if the run completed (the previous
    results are swapped out, then removed) or if there are none yet; else ``WS/result.failed``,
    keeping the previous results. Returns where they went."""
    final = workspace / "result"
    if not ok and final.exists():
        target = workspace / FAILED_RESULT
        shutil.rmtree(target, ignore_errors=True)
        record = TrainingRunRecord.read(new / "metrics.json")
        record.previous_results_kept = str(final)
        (new / "metrics.json").write_text(record.to_json())
        os.replace(new, target)
        return target
    old = workspace / f".ai4hi-previous-result-{uuid.uuid4().hex[:12]}"
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _check_drops(spec: JobSpec, sites: list[str], drops: str | None) -> None:
    """``--drop`` must name known sites and stages of a secure-aggregation job."""
    from ai4hi_sdk.site.secagg_client import parse_drops

    if not drops:
        return
    if spec.privacy.secure_aggregation is None:
        raise UserError("--drop injects faults into secure aggregation, which this job does not use")
    try:
        unknown = set(parse_drops(drops)) - set(sites)
    except ValueError as err:
        raise UserError(f"--drop: {err}") from None
    if unknown:
        raise UserError(f"--drop names unknown sites {sorted(unknown)}; sites are {', '.join(sites)}")


#: the server's name in the NVFlare simulator (written as the consortium's server for simulated sites)
SIMULATOR_SERVER = "simulator_server"


def _secure_aggregation_setup(spec: JobSpec, workspace: Path, sites: list[str], drops: str | None) -> dict[str, str]:
    """Simulated sites have no provisioned kit: give each one an identity from a CA made for this run
    (``WS/sites/<site>/startup/``, where a real kit keeps it) and the consortium's site list (the
    run's sites, ``WS/sites/<site>/ai4hi/consortium.json`` as ``ai4hi provision`` writes it), so key
    signing, verification and participant pinning run exactly as in a deployment. Returns the
    environment for fault injection (checked by :func:`_check_drops`)."""
    from ai4hi_sdk.site.secagg_client import DROP_ENV
    from ai4hi_sdk.site_paths import CONSORTIUM_LIST
    from ai4hi_sdk.privacy.secagg.protocol.identity import make_throwaway_ca

    if spec.privacy.secure_aggregation is not None:
        make_throwaway_ca(sites, {site: workspace / "sites" / site / "startup" for site in sites})
        members = {"consortium": f"simulation of {spec.name}", "server": SIMULATOR_SERVER, "sites": sorted(sites)}
        for site in sites:
            target = workspace / "sites" / site / CONSORTIUM_LIST
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(members, indent=2, sort_keys=True))
    return {DROP_ENV: drops} if drops else {}

"""The consortium lead's admin session: submit ai4hi jobs and follow them on a real deployment.

A thin layer over NVFlare's Session API (:mod:`nvflare.fuel.flare_api.flare_api`) that turns its
exceptions into :class:`~ai4hi_sdk.errors.UserError` with a reason a lead can act on (server
unreachable, not authorised, job rejected, no such job) and never waits without a limit.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.deploy.kit import Kit, load_kit
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.jobs.run_record import RecordError, Refusal, TrainingRunRecord

TERMINAL_PREFIX = "FINISHED"
#: the job's metrics as the server writes them while it runs (see jobs/components/controller.py)
RUN_METRICS_FILE = "ai4hi_metrics.json"


@dataclass
class Progress:
    """What a lead sees while waiting: NVFlare's job status plus the ai4hi round record, if readable."""

    status: str
    rounds_done: int | None = None
    rounds_total: int | None = None
    sites_active: list[str] | None = None
    refused: list[Refusal] | None = None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NVFlare's admin client prints connection chatter to stdout and its loggers; keep the CLI's
    output readable (errors still surface as exceptions)."""
    loggers = [logging.getLogger(n) for n in ("nvflare", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _translate(err: Exception, server: str, what: str) -> UserError:
    """NVFlare session exceptions -> a clear UserError."""
    from nvflare.fuel.flare_api import api_spec as spec

    name = type(err).__name__
    if isinstance(err, spec.NoConnection) or isinstance(err, ConnectionError):
        return UserError(f"cannot reach the consortium server at {server} ({err}); is it running "
                         "('ai4hi site start SERVER_KIT') and reachable from here?")
    if isinstance(err, spec.AuthenticationError):
        return UserError(f"the server at {server} did not accept this admin kit ({err}); check --username "
                         "matches the kit's e-mail and that the kit belongs to this consortium")
    if isinstance(err, spec.AuthorizationError):
        return UserError(f"{what} was rejected by the server's authorization policy: {err} "
                         "(only the consortium lead may submit jobs)")
    if isinstance(err, spec.InvalidJobDefinition):
        return UserError(f"{what} was rejected by the server: {err}")
    if isinstance(err, spec.JobNotFound):
        return UserError(f"{what}: {err}")
    if isinstance(err, (spec.JobNotRunning, spec.JobNotDone)):
        return UserError(f"{what}: {err}")
    return UserError(f"{what} failed: {name}: {err}")


class AdminSession:
    """An authenticated admin session with the consortium server.

    Args:
        admin_kit: the lead's (or a site admin's) provisioned admin kit.
        username: the kit's e-mail (default: the one the kit was provisioned for).
        timeout_s: how long to try to connect before giving up (the server may be starting).
    """

    def __init__(self, admin_kit: str | Path, username: str | None = None, timeout_s: float = 15.0):
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        self.kit: Kit = load_kit(admin_kit, expect="admin")
        self.username = username or self.kit.name
        host, port = self.kit.server_target
        self.server = f"{host}:{port}"
        try:
            with _quiet():
                self._session = new_secure_session(self.username, str(self.kit.path), timeout=timeout_s)
        except Exception as err:  # NVFlare raises several unrelated types here
            raise _translate(err, self.server, "logging in") from None

    def __enter__(self) -> "AdminSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception), _quiet():
            self._session.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            with _quiet():
                return fn(*args, **kwargs)
        except UserError:
            raise
        except Exception as err:
            raise _translate(err, self.server, what) from None

    # ------------------------------------------------------------------ system
    def connected_sites(self) -> list[str]:
        """Names of the sites currently connected to the server."""
        info = self._call("checking the system status", self._session.get_system_info)
        return sorted(c.name for c in info.client_info)

    def wait_for_sites(self, sites: list[str], timeout_s: float = 120, poll_s: float = 1.0) -> list[str]:
        """Wait until every site in ``sites`` is connected (NVFlare's scheduler backs off for
        minutes when a job's sites are missing, so submitting early costs far more than waiting)."""
        deadline = time.monotonic() + timeout_s
        while True:
            connected = self.connected_sites()
            if set(sites) <= set(connected):
                return connected
            if time.monotonic() > deadline:
                missing = sorted(set(sites) - set(connected))
                raise UserError(f"sites {missing} did not connect to {self.server} within {timeout_s:.0f} s "
                                f"(connected: {connected or 'none'})")
            time.sleep(poll_s)

    # ------------------------------------------------------------------ jobs
    def submit_folder(self, job_dir: str | Path) -> str:
        """Submit an exported NVFlare job folder; return its job id."""
        return str(self._call("the job submission", self._session.submit_job, str(Path(job_dir).resolve())))

    def submit(self, spec: JobSpec, data_root: str | Path | None = None, train_timeout: int = 3600,
               prepare: Callable[[Path], None] | None = None) -> str:
        """Build ``spec`` with the same builder ``simulate`` uses, submit it, return the job id.

        ``prepare`` may edit the exported job folder before submission (tests use it to remove the
        job's own filters and show that the site's privacy.json still applies).
        """
        from ai4hi_sdk.jobs.builder import Ai4hiTrainingRecipe, export_recipe

        with tempfile.TemporaryDirectory(prefix="ai4hi-submit-", dir=self._scratch()) as tmp:
            recipe = Ai4hiTrainingRecipe(spec, data_root=data_root, train_timeout=train_timeout)
            job_dir = export_recipe(recipe, Path(tmp) / "jobs")
            if prepare is not None:
                prepare(job_dir)
            return self.submit_folder(job_dir)

    def _scratch(self) -> str:
        # the admin kit's transfer/ folder: no stray files outside the kit
        path = self.kit.path / "transfer"
        path.mkdir(exist_ok=True)
        return str(path)

    def job_meta(self, job_id: str) -> dict[str, Any]:
        return dict(self._call(f"job {job_id}", self._session.get_job_meta, job_id))

    def list_jobs(self) -> list[dict[str, Any]]:
        return list(self._call("listing jobs", self._session.list_jobs, detailed=True) or [])

    def abort(self, job_id: str) -> None:
        self._call(f"aborting job {job_id}", self._session.abort_job, job_id)

    def run_metrics(self, job_id: str) -> dict[str, Any] | None:
        """The server's live ai4hi round record of a running job, if this admin may read it
        (NVFlare's ``cat`` on the server: allowed to admins of the server's organisation)."""
        try:
            with _quiet():
                text = self._session.cat_target("server", file=f"{job_id}/{RUN_METRICS_FILE}")
            return json.loads(text)
        except Exception:  # not authorised, not written yet, or the job folder is gone: no progress detail
            return None

    def final_record(self, job_id: str) -> TrainingRunRecord | None:
        """The finished job's ai4hi round record: read on the server if its run folder is still
        there, else from a download into the kit's scratch folder (removed after). None if the
        job wrote none (or this admin may read neither); a record that does not match its schema
        raises RecordError naming the field."""
        from ai4hi_sdk.deploy.results import find_run_dir
        from ai4hi_sdk.jobs.wire import METRICS_FILE

        raw = self.run_metrics(job_id)
        record = TrainingRunRecord.load(raw, f"job {job_id}'s {RUN_METRICS_FILE}") if raw else None
        if record is not None and record.status != "running":
            return record
        with tempfile.TemporaryDirectory(prefix="ai4hi-record-", dir=self._scratch()) as tmp:
            try:
                location = self.download(job_id, tmp)
            except UserError:
                return record
            run_dir = find_run_dir(location)
            if run_dir is None:
                return record
            try:
                downloaded = json.loads((run_dir / METRICS_FILE).read_text())
            except (OSError, ValueError):
                return record
            return TrainingRunRecord.load(downloaded, f"job {job_id}'s {METRICS_FILE}")

    def progress(self, job_id: str) -> Progress:
        meta = self.job_meta(job_id)
        progress = Progress(status=str(meta.get("status")))
        raw = self.run_metrics(job_id) if progress.status == "RUNNING" else None
        try:
            record = TrainingRunRecord.load(raw, RUN_METRICS_FILE) if raw else None
        except RecordError:  # not an ai4hi record this SDK reads: no progress detail
            record = None
        if record is not None:
            progress.rounds_done = len(record.completed_rounds())
            progress.rounds_total = record.num_rounds
            refused = {r.site for r in record.refused}
            progress.sites_active = [s for s in record.sites if s not in refused]
            progress.refused = list(record.refused)
        return progress

    def wait(self, job_id: str, timeout_s: float = 3600, poll_s: float = 2.0,
             on_progress: Callable[[Progress], None] | None = None) -> dict[str, Any]:
        """Wait until the job finishes (``FINISHED:*``); return its final meta. Raises UserError on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            progress = self.progress(job_id)
            if on_progress is not None:
                on_progress(progress)
            if progress.status.startswith(TERMINAL_PREFIX):
                return self.job_meta(job_id)
            if time.monotonic() > deadline:
                raise UserError(f"job {job_id} is still {progress.status} after {timeout_s:.0f} s "
                                f"(keep waiting with 'ai4hi job wait {job_id}', or abort it)")
            time.sleep(poll_s)

    def download(self, job_id: str, dest: str | Path) -> Path:
        """Download the job's server workspace into ``dest``; return the folder holding it."""
        dest = Path(dest).resolve()
        dest.mkdir(parents=True, exist_ok=True)
        location = self._call(f"downloading job {job_id}", self._session.download_job_result, job_id,
                              str(dest))
        if not location or not Path(location).exists():
            raise UserError(f"the server returned no result for job {job_id}")
        return Path(location)

    def download_result(self, job_id: str, out: str | Path) -> dict[str, Any]:
        """Download a finished job into ``out/server/`` and write ``out/result/`` (the layout
        ``simulate`` writes, see :mod:`ai4hi_sdk.deploy.results`); return its metrics record."""
        from ai4hi_sdk.deploy.results import build_result

        meta = self.job_meta(job_id)
        if not str(meta.get("status", "")).startswith(TERMINAL_PREFIX):
            raise UserError(f"job {job_id} is {meta.get('status')}; wait for it to finish "
                            f"('ai4hi job wait {job_id}') before downloading")
        out = Path(out).resolve()
        shutil.rmtree(out / "server", ignore_errors=True)
        location = self.download(job_id, out / "server")
        return build_result(location, out, job_id, meta)

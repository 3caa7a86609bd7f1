"""The site-owned runtime: everything a site does for one job, in code the site installed.

:class:`SiteRuntime` is framework-free (the NVFlare executor in :mod:`ai4hi_sdk.site.executor` only
converts messages). For each task it:

1. admits the job — wire version, then the site's policy (:meth:`SiteGate.check_job`: job kind, DP
   and secure aggregation required, custom code allowed by SHA-256) — **before** any of the job's
   code is installed or imported;
2. builds the job's trainer (an SDK trainer, or the job's own code once its hash is allowed); a
   base checkpoint the job names by sha256 comes from the site's own store, hashed before round 0
   (:mod:`ai4hi_sdk.site.backbones`), never from the job;
3. runs every check that can refuse before training spends anything (budget projection, secure
   aggregation's public bounds, k);
4. trains with the SDK's loop (:func:`~ai4hi_sdk.trainers.local_round.train_round`) and the
   trainer's hooks; DP-SGD, client-level DP, quantisation and masking are applied here, never by
   the trainer; only the tensors the trainer exchanges (checked: distinct floating-point entries
   of the model) are loaded from the server and sent back;
5. books the payload in the ledger before it leaves (write-ahead) and returns only what the site's
   rules allow to leave (:mod:`ai4hi_sdk.jobs.wire`): statistics of the local training leave only
   inside a secure-aggregation sum, never alone.

Anything that goes wrong becomes a refusal (:class:`~ai4hi_sdk.errors.RoundRefused`): the site
sends only the reason. Reasons are the SDK's own words with the site's paths replaced; an error
raised by a job's trainer leaves only as its class name (the traceback stays in the site's log).
"""

from __future__ import annotations

import math
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.site_policy import TRAINING_JOB_KINDS
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.errors import RoundRefused, UserError
from ai4hi_sdk.jobs.wire import (ACCOUNTING_METRICS, BASE_CHECKPOINT_KEY, BASE_CHECKPOINT_SHA256_KEY,
                                 DP_PARAMETER_METRICS, GLOBAL_VALIDATION_PREFIX, NUM_SAMPLES_KEY, PROTOCOL_TASKS,
                                 ROUND_KEY, WEAK_LABEL_COUNT, WEAK_LABEL_METRICS, WIRE_VERSION)
from ai4hi_sdk.privacy.egress import describe_payload
from ai4hi_sdk.site.code_bundle import CodeFiles, bundle_sha256, install_code
from ai4hi_sdk.site.gate import ClientDPPlan, JobRequest, SiteGate
from ai4hi_sdk.site_paths import configured_data_dir
from ai4hi_sdk.trainers.site_trainer import SiteTrainer

SITE_DATA_DIR_ENV = "AI4HI_SITE_DATA_DIR"
DATA_ROOT_ENV = "AI4HI_DATA_ROOT"


@dataclass
class Outgoing:
    """What a task returns: params (arrays), metrics (numbers) and meta, exactly as they leave."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    diff: bool = False  # params are a model delta


def resolve_site_dir(site_name: str, job_data_root: str | None, workspace: str | Path | None = None) -> Path:
    """The site's data folder: the site's environment (``AI4HI_SITE_DATA_DIR``, then
    ``AI4HI_DATA_ROOT``), then its ``ai4hi/site.yaml``, then the job's ``--data-root``."""
    import os

    if os.environ.get(SITE_DATA_DIR_ENV):
        return Path(os.environ[SITE_DATA_DIR_ENV])
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]) / site_name
    configured = configured_data_dir(workspace) if workspace is not None else None
    if configured is not None:
        return configured
    if not job_data_root:
        raise RoundRefused(f"site {site_name}: no data folder; the site admin sets data_dir in ai4hi/site.yaml "
                           f"or {SITE_DATA_DIR_ENV}")
    return Path(job_data_root) / site_name


def _first_problems(err: ValueError) -> str:
    """A validation error as 'field: reason' (at most three), or its first line."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        items = [f"{'.'.join(map(str, e.get('loc', ()))) or 'job'}: {e.get('msg', '')}" for e in errors()[:3]]
        if items:
            return "; ".join(items)
    return str(err).splitlines()[0]


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class SiteRuntime:
    """One job at one site.

    Args:
        job: the job's settings (a :class:`JobSpec` or its JSON form), read by the site itself.
        code: the job's custom code bundle (relative path -> base64), empty for SDK trainers.
        site_name: this site's name.
        job_id: the job's id.
        workspace: the site workspace (policy, budget, ledger, provisioned identity).
        data_root: the job's default data root (a site's own settings win over it).
        validation: validation settings of a validation/monitoring job.
        wire_version: the SDK wire version the job was built with.
        device: force a device for the trainer.
    """

    def __init__(self, job: JobSpec | Mapping[str, Any], *, site_name: str, job_id: str,
                 workspace: str | Path | None, code: CodeFiles | None = None, data_root: str | None = None,
                 validation: ValidationSpec | Mapping[str, Any] | None = None, wire_version: int = WIRE_VERSION,
                 device: str | None = None):
        self.wire_version = wire_version
        self.site_name, self.job_id = site_name, job_id
        self.workspace = Path(workspace) if workspace is not None else None
        self.code = dict(code or {})
        self.data_root, self.device = data_root, device
        self._spec_error = ""
        try:
            self.spec = job if isinstance(job, JobSpec) else JobSpec.model_validate(dict(job))
            self.validation = (validation if validation is None or isinstance(validation, ValidationSpec)
                               else ValidationSpec.model_validate(dict(validation)))
        except ValueError as err:  # a malformed job is refused, not crashed on
            self.spec, self.validation = None, None  # type: ignore[assignment]
            self._spec_error = f"the job's settings are invalid: {_first_problems(err)}"
        self.code_sha256 = bundle_sha256(self.code) if self.code else None
        dp = self.spec.privacy.dp_sgd if self.spec is not None else None
        self.gate = SiteGate(self.workspace, job_id, dp_accountant=dp.accountant if dp else None)
        # the gate's methods, bound before any job code is imported: a job's code that patches the
        # SDK's classes later cannot reach these (allowed code is trusted code all the same: see docs/security.md)
        self._check_job, self._plan_round = self.gate.check_job, self.gate.plan_round
        self._plan_client_dp, self._commit = self.gate.plan_client_dp, self.gate.commit
        self._bind_dataset = self.gate.bind_dataset
        self._admitted: dict[str, BaseException | None] = {}
        self._trainer: Any = None
        self._site_dir: Path | None = None
        self._secure: Any = None
        self._dp_session: Any = None
        self._validation_site: Any = None
        self._round_plan: Any = None  # the DP-SGD plan the gate allowed for the current round
        self._model: Any = None
        self._exchanged: list[str] | None = None
        #: the base checkpoint this site used (its store folder), once verified
        self.base_checkpoint: Path | None = None

    # ------------------------------------------------------------------ admission
    @property
    def training_kind(self) -> str:
        """The policy's job kind of this job's training tasks: ``pretrain`` for ``task: pretrain``."""
        return "pretrain" if self.spec is not None and self.spec.task == "pretrain" else "train"

    def request(self, kind: str) -> JobRequest:
        privacy, data = self.spec.privacy, self.spec.data
        reports = data.labels_from == "reports"
        training = kind in TRAINING_JOB_KINDS
        return JobRequest(kind=kind, dp_sgd=privacy.dp_sgd if training else None,
                          client_dp=privacy.client_dp if training else None,
                          secure_aggregation=privacy.secure_aggregation is not None, code_sha256=self.code_sha256,
                          method=self.spec.method, labeler_version=data.labeler_version if reports else None,
                          report_finding=data.report_finding if reports else None)

    def admit(self, kind: str) -> None:
        """Refuse (before any job code runs) unless this site speaks the job's wire version and its
        policy allows the job. Decided once per job and kind, before the job's code is imported."""
        if kind not in self._admitted:
            try:
                self._decide_admission(kind)
                self._admitted[kind] = None
            except RoundRefused as err:
                self._admitted[kind] = err
        refusal = self._admitted[kind]
        if refusal is not None:
            raise refusal

    def _decide_admission(self, kind: str) -> None:
        if self.wire_version != WIRE_VERSION:
            raise RoundRefused(f"the job was built for SDK wire version {self.wire_version}; this site speaks "
                               f"{WIRE_VERSION} (the site and the lead must run compatible SDK versions)")
        if self.spec is None:
            raise RoundRefused(self._spec_error)
        self._check_job(self.request(kind))

    @property
    def site_dir(self) -> Path:
        if self._site_dir is None:
            self._site_dir = resolve_site_dir(self.site_name, self.data_root, self.workspace)
        return self._site_dir

    @property
    def trainer(self) -> Any:
        """The job's trainer, built after admission (custom code is installed only now)."""
        if self._trainer is None:
            from ai4hi_sdk.trainers.loading import TrainerNotFound, load_trainer_class

            code_dirs: list[Path] = []
            if self.code:
                if self.workspace is None:
                    raise RoundRefused("custom code needs a site workspace to be installed in")
                code_dirs = install_code(self.code, self.workspace / "ai4hi" / "jobs" / self.job_id / "code")
            try:
                cls = load_trainer_class(self.spec.trainer, code_dirs, self.code.keys())
            except TrainerNotFound as err:
                raise RoundRefused(f"trainer: {err}") from None
            if not issubclass(cls, SiteTrainer):  # checked again: loaders can be patched too
                raise RoundRefused(f"trainer: '{self.spec.trainer}' is not a SiteTrainer")
            spec = self._spec_with_site_checkpoint()
            try:
                self._trainer = cls(spec, site_dir=self.site_dir, site_name=self.site_name,
                                    device=self.device, site_workspace=self.workspace, job_id=self.job_id)
            except UserError as err:
                raise RoundRefused(f"trainer: {err}") from None
        return self._trainer

    def _spec_with_site_checkpoint(self) -> JobSpec:
        """The spec the trainer gets: a base checkpoint the job names (``model.checkpoint_sha256``)
        replaced by this site's own copy, whose bytes are hashed here first; any path the job gives
        is ignored. Refuses (before round 0) when the site does not hold the backbone or its copy
        differs, and a job that names a checkpoint without its sha256."""
        from ai4hi_sdk.site.backbones import locate_backbone

        spec = self.spec.model_copy(deep=True)
        model = dict(spec.model)
        sha = model.get(BASE_CHECKPOINT_SHA256_KEY)
        if sha is None:
            if model.get(BASE_CHECKPOINT_KEY) is not None:
                raise RoundRefused("base checkpoint: the job names a checkpoint without its sha256 "
                                   f"(model.{BASE_CHECKPOINT_SHA256_KEY}); this site loads only a backbone it can verify")
            return spec
        self.base_checkpoint = locate_backbone(self.workspace, sha)
        model[BASE_CHECKPOINT_KEY] = str(self.base_checkpoint)
        return spec.model_copy(update={"model": model})

    @property
    def exchanged_names(self) -> list[str]:
        """The tensors this job exchanges (the trainer's :meth:`~SiteTrainer.exchanged_names`,
        checked against the model the runtime built): the only entries loaded from the server's
        model and the only ones whose delta leaves."""
        if self._exchanged is None:
            from ai4hi_sdk.trainers.state import check_exchanged_names

            try:
                self._exchanged = check_exchanged_names(self.model, self.trainer.exchanged_names())
            except ValueError as err:
                raise RoundRefused(f"trainer: {err}") from None
        return self._exchanged

    def _check_received(self, global_state: Mapping[str, Any]) -> None:
        expected = set(self.exchanged_names)
        missing, unexpected = sorted(expected - set(global_state)), sorted(set(global_state) - expected)
        if missing or unexpected:
            raise RoundRefused(f"the server's model is not this job's exchanged state: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")

    @property
    def model(self) -> Any:
        """The trainer's model as the runtime built it: DP-SGD compatible when the job (as the site
        read it, not the trainer's copy) uses DP-SGD."""
        if self._model is None:
            try:
                self._model = SiteTrainer.build_seeded_model(self.trainer, private=self.spec.privacy.dp_sgd is not None)
            except UserError as err:  # e.g. a model opacus cannot train
                raise RoundRefused(str(err)) from None
        return self._model

    # ------------------------------------------------------------------ training
    @property
    def secure(self) -> Any:
        if self._secure is None and self.spec.privacy.secure_aggregation is not None:
            from ai4hi_sdk.site.secagg_client import SecureAggregationSite

            from ai4hi_sdk.trainers.state import exchanged_state

            # the payload layout: the exchanged tensors only (e.g. adapters and head)
            self._secure = SecureAggregationSite(self.spec.privacy.secure_aggregation, self.site_name, self.job_id,
                                                 self.workspace, exchanged_state(self.model, self.exchanged_names),
                                                 self.trainer.declared_metrics(), policy=self.gate.policy,
                                                 reveal_check=self._reveal_check())
        return self._secure

    def _reveal_check(self):
        """With client-level DP booked as the site's protection (no DP-SGD): refuse to reveal any
        share when the survivors' noise shares add up to less than the site's minimum noise
        multiplier (dropouts after the noise was sized). None otherwise."""
        from functools import partial

        from ai4hi_sdk.privacy.dp.client_level import noise_shortfall

        cdp, policy = self.spec.privacy.client_dp, self.gate.policy
        if cdp is None or self.spec.privacy.dp_sgd is not None or policy is None:
            return None
        return partial(noise_shortfall, noise_multiplier=cdp.noise_multiplier,
                       min_noise_multiplier=policy.min_noise_multiplier)

    def train(self, global_state: Mapping[str, Any], round_index: int, total_rounds: int | None,
              secagg_meta: Mapping[str, Any] | None = None) -> Outgoing:
        """One training round; see the module docstring for the order of checks."""
        import torch

        from ai4hi_sdk.trainers.local_round import train_round

        self.admit(self.training_kind)
        trainer, privacy = self.trainer, self.spec.privacy
        self._check_received(global_state)
        secure = self.secure
        if secure is not None:
            if not isinstance(secagg_meta, Mapping):
                raise RoundRefused("secure aggregation: the task carries no protocol data")
            if secagg_meta.get("round") != round_index:
                raise RoundRefused(f"secure aggregation: the task's protocol data is for round "
                                   f"{secagg_meta.get('round')!r}, the model for round {round_index}")
        self._bind_dataset(self.site_dir)
        n_train = len(trainer.datasets.train)
        if secure is not None:
            secure.check_weight(secagg_meta, n_train)
        client_dp = self._client_dp_plan(round_index)
        if client_dp is not None and privacy.dp_sgd is None:
            self._plan_client_dp(client_dp, round_index)
        make_private = self._make_private(round_index, total_rounds, client_dp) if privacy.dp_sgd else None
        state = {k: torch.as_tensor(v) for k, v in global_state.items()}
        result = train_round(trainer, self.model, state, round_index, make_private=make_private,
                             names=self.exchanged_names)
        delta = result.delta
        if client_dp is not None:
            from ai4hi_sdk.privacy.dp.client_level import privatize_delta, secure_generator

            # the noise share from the participant names this site verified (None: all of the noise here)
            delta, _ = privatize_delta(delta, client_dp.clip, client_dp.noise_multiplier,
                                       client_dp.participant_names or None, secure_generator())
        local = {**_finite(result.metrics), **self._agreement_metrics()}
        plan = self._round_plan
        encode = secure.package(secagg_meta) if secure is not None else None
        built: list[Outgoing] = []

        def build(dp_metrics: Mapping[str, float]) -> dict:
            metrics = {**local, **dp_metrics}
            if encode is not None:
                params, clear, meta = encode(delta, metrics, n_train)
                out = Outgoing(params=params, metrics=clear, meta=dict(meta), diff=True)
            else:
                out = Outgoing(params={k: v.numpy() for k, v in delta.items()}, metrics=self._plain_metrics(metrics),
                               meta={NUM_SAMPLES_KEY: n_train}, diff=True)
            out.meta[ROUND_KEY] = int(round_index)
            built.append(out)
            return describe_payload(out.params, out.metrics)

        self._commit(round_index=round_index, build=build, plan=plan if privacy.dp_sgd else None,
                         steps_taken=result.steps, client_dp=client_dp,
                         protection="secure aggregation" if secure is not None else "none")
        return built[0]

    def _make_private(self, round_index: int, total_rounds: int | None, client_dp: ClientDPPlan | None):
        from ai4hi_sdk.privacy.dp.dpsgd import DPSGDSession
        from ai4hi_sdk.trainers.local_round import private_setup, steps_per_round

        dp = self.spec.privacy.dp_sgd
        trainer = self.trainer

        def make_private(loader, optimizer):
            if self._dp_session is None:
                self._dp_session = DPSGDSession(self.model, dp.grad_sample_mode)
            q, steps = steps_per_round(trainer, loader)
            plan = self._plan_round(dp, sample_rate=q, steps=steps, total_rounds=total_rounds or trainer.spec.train.rounds,
                                        round_index=round_index, client_dp=client_dp)
            self._round_plan = plan
            device = next(self.model.parameters()).device
            return private_setup(self._dp_session, loader, optimizer, plan, trainer.spec.train.batch_size, device)

        return make_private

    def _client_dp_plan(self, round_index: int) -> ClientDPPlan | None:
        """Client-level DP as this site accounts it: noise share from the participants the site
        verified itself under secure aggregation (never the server's count); all of the noise
        at this site without it."""
        cdp = self.spec.privacy.client_dp
        if cdp is None:
            return None
        if self._secure is None:
            return ClientDPPlan(cdp.noise_multiplier, cdp.clip, participants=1, survivors_min=1)
        names, t = self._secure.verified(round_index)
        return ClientDPPlan(cdp.noise_multiplier, cdp.clip, participants=len(names), survivors_min=max(t, 1),
                            participant_names=names)

    def _plain_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """What leaves with a plain (not secure-aggregated) update: the accounting, the DP round's
        parameters (the site's size is public with its FedAvg weight anyway), the received
        model's validation metrics when the validation split has at least k studies, and the
        weak-label agreement when at least k studies carry both labels. Statistics of the local
        training stay at the site."""
        keep = set(ACCOUNTING_METRICS) | set(DP_PARAMETER_METRICS)
        out = {k: v for k, v in metrics.items() if k in keep}
        if metrics.get(f"{GLOBAL_VALIDATION_PREFIX}samples", 0.0) >= self._min_count:
            out.update({k: v for k, v in metrics.items() if k.startswith(GLOBAL_VALIDATION_PREFIX)})
        if metrics.get(WEAK_LABEL_COUNT, 0.0) >= self._min_count:
            out.update({k: v for k, v in metrics.items() if k in WEAK_LABEL_METRICS})
        return out

    def _agreement_metrics(self) -> dict[str, float]:
        """Agreement of the site's weak labels with its hand labels (``weak_label_*``), computed by the
        SDK's dataset loader over the studies of the job's training images; empty unless the job's
        labels come from reports and at least k studies have both labels (k-suppressed as a whole)."""
        from ai4hi_sdk.data.weak_labels import LabelAgreement

        if self.spec.data.labels_from != "reports":
            return {}
        agreement = getattr(self.trainer.datasets, "label_agreement", None)
        if not isinstance(agreement, LabelAgreement) or agreement.studies < self._min_count:
            return {}
        return agreement.metrics()

    @property
    def _min_count(self) -> int:
        policy = self.gate.policy
        return policy.min_count if policy is not None else 2

    # ------------------------------------------------------------------ other tasks
    def validate(self, global_state: Mapping[str, Any]) -> Outgoing:
        """Metrics of the received model on the validation split (k-suppressed as a whole)."""
        self.admit("validate")
        self._check_received(global_state)
        metrics = {**self.trainer.validate(global_state), **self._agreement_metrics()}
        if metrics.get("val_samples", 0.0) < self._min_count:
            raise RoundRefused(f"the validation split has {int(metrics.get('val_samples', 0))} studies, fewer than "
                               f"k = {self._min_count}: no aggregate of it may leave this site")
        return Outgoing(metrics=metrics)

    def protocol(self, task: str, secagg_meta: Mapping[str, Any] | None) -> Outgoing:
        """A secure-aggregation protocol step (keys, shares, consistency, unmask)."""
        self.admit(self.training_kind)
        if self.secure is None:
            raise RoundRefused(f"task {task!r} needs secure aggregation, which this job does not use")
        if not isinstance(secagg_meta, Mapping):
            raise RoundRefused("secure aggregation: the task carries no protocol data")
        return Outgoing(params=self.secure.handle(task, secagg_meta))

    def validation_site(self, kind: str) -> Any:
        from ai4hi_sdk.site.validation import ValidationSite

        self.admit(kind)
        if self.validation is None:
            raise RoundRefused("the job carries no validation settings")
        if self._validation_site is None:
            self._validation_site = ValidationSite(self.trainer, self.validation, self._min_count)
        return self._validation_site

    def cross_validate(self, candidate: Mapping[str, Any], champion: Mapping[str, Any],
                       operating_points: Mapping[str, Any] | None = None) -> Outgoing:
        from ai4hi_sdk.validation.site_report import flatten_metrics

        site = self.validation_site("validate")
        return Outgoing(metrics=flatten_metrics(site.cross_validate(candidate, champion, operating_points)))

    def operating_point(self, models: Mapping[str, Mapping[str, Any]]) -> Outgoing:
        """k-merged score histograms of each given model on the validation split (job kind ``validate``)."""
        from ai4hi_sdk.validation.site_report import flatten_metrics

        return Outgoing(metrics=flatten_metrics(self.validation_site("validate").operating_point(models)))

    def monitor(self, deployed: Mapping[str, Any]) -> Outgoing:
        from ai4hi_sdk.validation.site_report import flatten_metrics

        return Outgoing(metrics=flatten_metrics(self.validation_site("monitor").monitor(deployed)))

    # ------------------------------------------------------------------ refusals
    def refusal_reason(self, err: BaseException) -> str:
        """What may leave about a failure: the SDK's reason with the site's paths replaced, or for
        any other error only its class (the full traceback goes to the site's log)."""
        if isinstance(err, RoundRefused):
            reason = str(err)
            for path, label in ((self._site_dir, "<site data>"), (self.workspace, "<site workspace>")):
                if path is not None:
                    for form in {str(path), str(Path(path).resolve())}:
                        reason = reason.replace(form, label)
            return reason[:1000]
        print(f"[ai4hi] {self.site_name}: task failed:", file=sys.stderr)
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
        return (f"the site could not complete the task ({type(err).__name__}); the details stay in the site's log")

    def refusal_privacy(self, err: BaseException) -> dict | None:
        privacy = getattr(err, "privacy", None)
        return privacy if privacy is not None else self.gate.position()


#: task names the runtime answers, for the executor
def protocol_task(task: str) -> bool:
    return task in PROTOCOL_TASKS

"""The site's gate for one job: policy check, per-round budget check, write-ahead spend and ledger.

Site-installed code only: the site runtime (:mod:`ai4hi_sdk.site.runtime`) holds the gate; a job's
trainer never sees it. In order, for every task:

1. :meth:`SiteGate.check_job` — before any of the job's code is imported: does the site's policy
   allow this job at all (kind, DP required, secure aggregation required, custom code allowed by
   hash, a batch-coupled method where patient-level DP is required)? Does the site hold the report
   labeler rule set the job names? A site without a policy file refuses to train.
2. :meth:`SiteGate.plan_round` — before training: the round's (noise multiplier, q, steps); the
   noise is the job's, or calibrated once from the job's target epsilon over all its rounds; the
   budget projects the epsilon after the round (DP-SGD and client-level DP together) and
   **refuses** (recorded in the ledger) if it would exceed the site's limit or if the noise is
   below the site's minimum.
3. :meth:`SiteGate.commit` — after the payload is built, before it leaves: the ledger entry with
   the payload's description is written first (write-ahead), then the budget state; a training
   payload without a DP spend gets an ``egress`` commitment. The site's egress guard lets a
   training payload out only if the ledger holds its commitment.

Any refusal raises :class:`~ai4hi_sdk.errors.RoundRefused`; the runtime then sends nothing for
the task but the reason (and the site's privacy position).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ai4hi_sdk.config.job_spec import BATCH_COUPLED_METHODS, ClientDPSpec, DPSGDSpec
from ai4hi_sdk.errors import ConfigError, RoundRefused
from ai4hi_sdk.privacy.dp.accountants import AccountingError, create_accountant
from ai4hi_sdk.privacy.dp.budget import PRIVACY_STATE_DIR, BudgetExceeded, PrivacyBudget
from ai4hi_sdk.privacy.dp.budget_decision import BudgetDecision
from ai4hi_sdk.privacy.dp.calibration import noise_multiplier_for_target
from ai4hi_sdk.privacy.dp.dpsgd import RoundPlan
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, LedgerDamaged, PrivacyLedger
from ai4hi_sdk.config.site_policy import SITE_POLICY, TRAINING_JOB_KINDS, SitePrivacyPolicy, load_site_policy
from ai4hi_sdk.audit.hash_chain import ChainDamaged
from ai4hi_sdk.site.dataset_identity import DatasetIdentity, DatasetRegistry, identify_dataset, site_salt

__all__ = ["JobRequest", "ClientDPPlan", "SiteGate", "RoundRefused"]


@dataclass(frozen=True)
class JobRequest:
    """What a job asks of a site, as far as the gate is concerned (read from the job's settings by
    the site runtime, never from job code).

    Attributes:
        kind: ``train``, ``pretrain``, ``validate`` or ``monitor``.
        dp_sgd: the job's DP-SGD settings (None: no DP-SGD).
        client_dp: the job's client-level DP settings (None: none).
        secure_aggregation: whether the job uses secure aggregation.
        code_sha256: SHA-256 of the job's custom code bundle (None: SDK code only).
        method: the job's training method (``supervised``, or ``image_report``: a contrastive loss).
        labeler_version, report_finding: the report labeler rule set and finding of a job whose
            labels come from reports (None: labels.csv).
    """

    kind: str
    dp_sgd: DPSGDSpec | None = None
    client_dp: ClientDPSpec | None = None
    secure_aggregation: bool = False
    code_sha256: str | None = None
    method: str = "supervised"
    labeler_version: str | None = None
    report_finding: str | None = None


@dataclass(frozen=True)
class ClientDPPlan:
    """Client-level DP of one round as the site accounts it.

    ``noise_multiplier`` is the job's; ``effective_noise_multiplier`` what protects this site's
    delta in the sum the server unmasks: ``sigma * sqrt(t / n)`` under secure aggregation (each of
    the ``n`` verified participants adds ``1/n`` of the variance; at least ``t`` survive), ``sigma``
    without it (the site adds all the noise itself).

    Accounting: a client-level release bounds the whole dataset's influence, so it also bounds any
    one patient's. Without DP-SGD it is the patient-level protection and is booked against the
    dataset's budget (one step at q = 1, checked against ``min_noise_multiplier``). With DP-SGD
    the patient-level guarantee is DP-SGD's and the client-level noise is post-processing of it:
    the release is recorded with the DP-SGD round in the ledger, not spent again.
    """

    noise_multiplier: float
    clip: float
    participants: int
    survivors_min: int
    #: the participants the site verified in secure aggregation (empty without it)
    participant_names: tuple[str, ...] = ()

    @property
    def effective_noise_multiplier(self) -> float:
        return self.noise_multiplier * math.sqrt(self.survivors_min / self.participants)

    @property
    def composition(self) -> tuple[float, float, int]:
        return (self.effective_noise_multiplier, 1.0, 1)


class SiteGate:
    """Privacy gate of one site for one job.

    Args:
        workspace: the site workspace holding ``ai4hi/site_policy.yaml``, the budget state and
            the ledger; ``None`` outside a federation (tests, benchmarks): no policy, and epsilon
            is accounted in memory only.
        job_id: recorded in the ledger.
        dp_accountant: the job's accountant choice, used only without a policy.
    """

    def __init__(self, workspace: str | Path | None, job_id: str, dp_accountant: str | None = None):
        self.workspace = Path(workspace) if workspace is not None else None
        self.job_id = job_id
        self.policy: SitePrivacyPolicy | None = None
        self.policy_error = ""
        if self.workspace is not None:
            policy_path = self.workspace / SITE_POLICY
            if not policy_path.is_file():
                self.policy_error = (f"no site privacy policy at {policy_path}; the site admin must create one "
                                     "(see site_templates/site_policy.example.yaml)")
            else:
                try:
                    self.policy = load_site_policy(policy_path)
                except ConfigError as err:
                    self.policy_error = str(err)
        self.ledger: PrivacyLedger | None = None
        self.budget: PrivacyBudget | None = None  # a budget exists only with a ledger (both in the workspace)
        if self.workspace is not None:
            self.ledger = PrivacyLedger(self.workspace / PRIVACY_LEDGER)
            if self.policy is not None:
                self.budget = PrivacyBudget(self.workspace / PRIVACY_STATE_DIR, self.policy, self.ledger)
        self.accountant_name = self.policy.accountant if self.policy is not None else (dp_accountant or "rdp")
        self._local_accountant = create_accountant(self.accountant_name)  # used when there is no budget
        self._noise_multiplier: float | None = None
        self.identity: DatasetIdentity | None = None
        self.related: list[str] = []

    # ------------------------------------------------------------------ identity
    @property
    def delta(self) -> float:
        """The site's delta (it rules); without a policy 1e-5."""
        return self.policy.delta if self.policy is not None else 1e-5

    @property
    def dataset_id(self) -> str:
        return self.identity.dataset_id if self.identity is not None else "local"

    def bind_dataset(self, data_dir: str | Path) -> DatasetIdentity:
        """Identify the site's data (salted study keys) and find earlier datasets sharing studies
        with it; their spends count against this one (fail closed on an unreadable registry)."""
        if self.workspace is None:
            self.identity = DatasetIdentity("local", frozenset(), "no site workspace")
            return self.identity
        try:
            self.identity = identify_dataset(data_dir, site_salt(self.workspace))
            registry = DatasetRegistry(self.workspace)
            self.related = registry.related(self.identity)
            registry.register(self.identity)
        except (OSError, ValueError) as err:
            raise RoundRefused(f"cannot identify the site's dataset: {err}") from None
        return self.identity

    def position(self) -> dict[str, Any] | None:
        """The site's privacy position on its dataset (sent with a refusal): ``dataset_id``,
        ``epsilon_spent``, ``epsilon_limit``, ``delta``; None when it cannot be known."""
        if self.budget is None or self.identity is None:
            return None
        try:
            spent = self.budget.epsilon_spent(self.dataset_id, self.related)
        except (AccountingError, LedgerDamaged, ChainDamaged, ValueError):
            spent = None
        return {"dataset_id": self.dataset_id, "epsilon_spent": spent,
                "epsilon_limit": self.budget.limit(self.dataset_id), "delta": self.delta}

    # ------------------------------------------------------------------ 1. the job
    def check_job(self, request: JobRequest) -> None:
        """Raise :class:`RoundRefused` if the site's policy does not allow this job."""
        if self.workspace is None:
            return
        if self.policy is None:
            raise RoundRefused(self.policy_error)
        reasons = self.policy.job_refusal_reasons(request.kind, dp_enabled=request.dp_sgd is not None,
                                                  secure_aggregation=request.secure_aggregation)
        if request.kind in TRAINING_JOB_KINDS and request.method in BATCH_COUPLED_METHODS and self.policy.require_dp:
            reasons.insert(0, f"method {request.method} trains with a contrastive loss, which couples the examples of a "
                           "batch: per-example DP-SGD does not bound one patient's influence, so this site's policy "
                           "(patient-level DP required) cannot be met; such a job needs client-level DP with secure "
                           "aggregation, at a site whose policy accepts that")
        reasons += _labeler_refusals(request)
        if request.code_sha256 is not None and request.code_sha256 not in self.policy.allowed_code_sha256:
            reasons.append(f"the job ships custom code with sha256 {request.code_sha256}, which this site's policy "
                           "does not allow (a site admin allows it with `ai4hi site allow-code`)")
        if (request.kind in TRAINING_JOB_KINDS and request.client_dp is not None and request.dp_sgd is None
                and self.policy.require_dp):
            # client-level DP protects the site's whole delta; patient-level DP-SGD is what the policy asks for
            reasons.append("the site policy requires patient-level DP (DP-SGD); client-level DP alone does not give it")
        if reasons:
            raise RoundRefused("; ".join(reasons), self.position())

    # ------------------------------------------------------------------ 2. before training
    def plan_round(self, dp: DPSGDSpec, *, sample_rate: float, steps: int, total_rounds: int, round_index: int,
                   client_dp: ClientDPPlan | None = None) -> RoundPlan:
        """Noise, q and steps of this DP-SGD round, checked against the budget (fail closed)."""
        if self._noise_multiplier is None:
            if dp.noise_multiplier is not None:
                self._noise_multiplier = dp.noise_multiplier
            elif dp.target_epsilon is None:  # the spec's validator requires one of the two
                raise RoundRefused("the job's DP-SGD spec gives neither a noise multiplier nor a target epsilon; "
                                   "nothing is trained or sent", self.position())
            else:  # calibrated once per job: the job's target epsilon over all of its rounds
                self._noise_multiplier = noise_multiplier_for_target(
                    dp.target_epsilon, self.delta, sample_rate, steps * max(total_rounds, 1),
                    accountant=self.accountant_name)
        plan = RoundPlan(self._noise_multiplier, sample_rate, steps, dp.max_grad_norm)
        self._check(plan.noise_multiplier, sample_rate, steps, round_index)
        return plan

    def plan_client_dp(self, client_dp: ClientDPPlan, round_index: int) -> None:
        """Check a client-level DP release alone (a job without DP-SGD) against the budget."""
        sigma, q, steps = client_dp.composition
        self._check(sigma, q, steps, round_index)

    def _check(self, sigma: float, q: float, steps: int, round_index: int) -> None:
        if self.budget is None:
            return
        decision = self.budget.check_round(self.dataset_id, sigma, q, steps, self.related)
        if not decision.allowed:
            self._record_refusal(decision, round_index)
            raise RoundRefused(f"privacy budget: {decision.reason}", self.position())

    def _record_refusal(self, decision: BudgetDecision, round_index: int) -> None:
        if self.ledger is None:  # no workspace: no budget either, so nothing to record
            return
        try:
            self.ledger.record_decision(decision, job_id=self.job_id, round_index=round_index)
        except (ChainDamaged, OSError):
            pass  # the refusal stands; the damage is reported by the refusal's reason and `privacy report`

    # ------------------------------------------------------------------ 3. before anything leaves
    def commit(self, *, round_index: int, build: Callable[[dict[str, float]], dict[str, Any]],
               plan: RoundPlan | None = None, steps_taken: int = 0, client_dp: ClientDPPlan | None = None,
               protection: str = "") -> dict[str, float]:
        """Book the round before its payload leaves: ``build(dp_metrics)`` makes the payload (once)
        and returns its description (:func:`~ai4hi_sdk.privacy.egress.describe_payload`); the
        ledger entry with that description is written first (write-ahead), then the budget state.
        Returns the accounting metrics (``dp_*``) that went into the payload.

        Without any DP spend, writes an ``egress`` commitment instead (so the egress guard can
        check the payload). Raises :class:`RoundRefused` when the round no longer fits or the
        ledger cannot be written: then nothing is spent and nothing may leave.
        """
        # the one release this round books: DP-SGD's, or client-level DP's when it is the only
        # protection (with DP-SGD, client-level noise is post-processing: see ClientDPPlan)
        release = ((plan.noise_multiplier, plan.sample_rate, max(int(steps_taken), 1), "dp_sgd") if plan is not None
                   else (*client_dp.composition, "client_dp") if client_dp is not None else None)
        client_record = None if client_dp is None else {
            "clip": client_dp.clip, "noise_multiplier": client_dp.noise_multiplier,
            "effective_noise_multiplier": client_dp.effective_noise_multiplier,
            "participants": client_dp.participants, "survivors_min": client_dp.survivors_min,
            **({"participant_names": list(client_dp.participant_names)} if client_dp.participant_names else {})}

        def dp_metrics(epsilon: float) -> dict[str, float]:
            if not math.isfinite(epsilon):
                raise RoundRefused("epsilon is unbounded (zero noise); nothing is sent")
            metrics = {"dp_epsilon": float(epsilon), "dp_delta": float(self.delta)}
            if plan is not None:
                metrics.update(dp_noise_multiplier=float(plan.noise_multiplier),
                               dp_sample_rate=float(plan.sample_rate), dp_steps=float(max(int(steps_taken), 1)))
            return metrics

        if release is None:
            egress = build({})
            if self.ledger is not None:
                try:
                    self.ledger.record_egress(job_id=self.job_id, round_index=round_index, egress=egress,
                                              protection=protection)
                except (ChainDamaged, OSError) as err:
                    raise RoundRefused(f"cannot commit the payload to the privacy ledger ({err}); nothing is sent",
                                       self.position()) from None
            return {}
        sigma, q, steps, mechanism = release
        if self.budget is None:  # local use: in-memory accounting only
            self._local_accountant.step(sigma, q, steps)
            metrics = dp_metrics(self._local_accountant.get_epsilon(self.delta))
            build(metrics)
            return metrics
        budget, ledger = self.budget, self.ledger
        if ledger is None:  # not reached: a budget is only built with its ledger; fail closed regardless
            raise RoundRefused("no privacy ledger to book this round in; nothing is sent", self.position())
        out: dict[str, float] = {}

        def write_ahead(decision: BudgetDecision) -> None:
            out.update(dp_metrics(decision.epsilon_after))
            ledger.record_round(
                job_id=self.job_id, dataset_id=self.dataset_id, round_index=round_index, sample_rate=q,
                noise_multiplier=sigma, steps=steps, epsilon_before=decision.epsilon_before,
                epsilon_after=decision.epsilon_after, delta=decision.delta, accountant=decision.accountant,
                egress=build(dict(out)), limit=decision.limit, mechanism=mechanism, client_dp=client_record)

        try:
            budget.commit_round(self.dataset_id, sigma, q, steps, self.related, write_ahead)
        except BudgetExceeded as err:
            self._record_refusal(err.decision, round_index)
            raise RoundRefused(f"privacy budget: {err.decision.reason}", self.position()) from None
        except (AccountingError, LedgerDamaged, ChainDamaged, OSError) as err:
            raise RoundRefused(f"privacy accounting failed, nothing is spent or sent: {err}",
                               self.position()) from None
        return out


def _labeler_refusals(request: JobRequest) -> list[str]:
    """Why the site cannot label the job's reports (the rule set or finding is not in its SDK)."""
    if request.labeler_version is None:
        return []
    from ai4hi_sdk.data.labeler import RULE_SETS

    rules = RULE_SETS.get(request.labeler_version)
    if rules is None:
        return [f"the job labels reports with rule set {request.labeler_version!r}, which this site's SDK does not "
                f"hold (it holds: {', '.join(sorted(RULE_SETS))})"]
    if request.report_finding is not None and request.report_finding not in rules.findings:
        return [f"rule set {rules.version} does not label the finding {request.report_finding!r} "
                f"(it labels: {', '.join(rules.finding_names)})"]
    return []

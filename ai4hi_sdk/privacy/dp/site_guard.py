"""The site's privacy gate for one job: policy check, per-round budget check, spend and ledger.

A site trainer asks the guard before any work and before anything leaves:

1. :meth:`SitePrivacyGuard.check_job` — does the site's policy allow this job at all (kind,
   DP required, secure aggregation required)? A site without a policy file refuses to train.
2. :meth:`SitePrivacyGuard.plan_round` — the round's (noise multiplier, q, steps); the noise is
   the job's, or calibrated once from the job's target epsilon over all its rounds; the budget
   projects the epsilon after the round and **refuses** (recorded in the ledger) if it would
   exceed the site's limit or if the noise is below the site's minimum.
3. :meth:`SitePrivacyGuard.commit_round` — after training, before sending: spend the budget
   (re-checked under a lock) and append the spend with the egress description to the ledger.

Any refusal raises :class:`RoundRefused`; the trainer then sends nothing for the round.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from ai4hi_sdk.config.job_spec import DPSGDSpec
from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.privacy.dp.accountants import create_accountant
from ai4hi_sdk.privacy.dp.budget import PRIVACY_STATE_DIR, BudgetExceeded, PrivacyBudget
from ai4hi_sdk.privacy.dp.calibration import noise_multiplier_for_target
from ai4hi_sdk.privacy.dp.dpsgd import RoundPlan
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.privacy.dp.policy import SITE_POLICY, SitePrivacyPolicy, load_site_policy


class RoundRefused(Exception):
    """The site will not train or send this round; ``str(err)`` is the reason."""


class SitePrivacyGuard:
    """Privacy gate of one site for one job.

    Args:
        dp: the job's DP-SGD settings (``None``: the job does not ask for DP-SGD).
        workspace: the site workspace holding ``ai4hi/site_policy.yaml``, the budget state and
            the ledger; ``None`` for local use outside a federation (tests, benchmarks): no
            policy, and epsilon is accounted in memory only.
        dataset_id: identity of the site's training data (see ``site_paths.dataset_id_for``).
        job_id: recorded in the ledger.
    """

    def __init__(self, dp: DPSGDSpec | None, workspace: str | Path | None, dataset_id: str, job_id: str):
        self.dp = dp
        self.workspace = Path(workspace) if workspace is not None else None
        self.dataset_id = dataset_id
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
        self.budget = (PrivacyBudget(self.workspace / PRIVACY_STATE_DIR, self.policy)
                       if self.policy is not None else None)
        self.ledger = PrivacyLedger(self.workspace / PRIVACY_LEDGER) if self.workspace is not None else None
        # the site's accountant rules; without a policy, the job's choice
        job_choice = dp.accountant if dp is not None and dp.accountant else "rdp"
        self.accountant_name = self.policy.accountant if self.policy is not None else job_choice
        self._local_accountant = create_accountant(self.accountant_name)  # used when there is no budget
        self._noise_multiplier: float | None = dp.noise_multiplier if dp else None

    @property
    def delta(self) -> float:
        """The site's delta when it has a policy (it rules), else the job's, else 1e-5."""
        if self.policy is not None:
            return self.policy.delta
        return (self.dp.delta if self.dp and self.dp.delta else None) or 1e-5

    def check_job(self, job_kind: str, secure_aggregation: bool = False) -> None:
        """Raise :class:`RoundRefused` if the site's policy does not allow this job."""
        if self.workspace is None:
            return
        if self.policy is None:
            raise RoundRefused(self.policy_error)
        reasons = self.policy.job_refusal_reasons(job_kind, dp_enabled=self.dp is not None,
                                                  secure_aggregation=secure_aggregation)
        if reasons:
            raise RoundRefused("; ".join(reasons))

    def plan_round(self, *, sample_rate: float, steps: int, total_rounds: int, round_index: int) -> RoundPlan:
        """Noise, q and steps of this round, checked against the budget (fail closed)."""
        assert self.dp is not None
        if self._noise_multiplier is None:
            # calibrated once per job: the job's target epsilon over all of its rounds
            self._noise_multiplier = noise_multiplier_for_target(
                self.dp.target_epsilon, self.delta, sample_rate, steps * max(total_rounds, 1),
                accountant=self.accountant_name)
        plan = RoundPlan(self._noise_multiplier, sample_rate, steps, self.dp.max_grad_norm)
        if self.budget is not None:
            decision = self.budget.check_round(self.dataset_id, plan.noise_multiplier, sample_rate, steps)
            if not decision.allowed:
                self.ledger.record_decision(decision, job_id=self.job_id, round_index=round_index)
                raise RoundRefused(f"privacy budget: {decision.reason}")
        return plan

    def commit_round(self, plan: RoundPlan, steps_taken: int, round_index: int,
                     describe: Callable[[dict[str, float]], dict[str, Any]] | None = None) -> dict[str, float]:
        """Spend the round's privacy (before anything is sent) and return the metrics to report:
        ``dp_epsilon`` (spent on this dataset so far), ``dp_delta``, ``dp_noise_multiplier``,
        ``dp_sample_rate``, ``dp_steps``. ``describe(dp_metrics)`` gives the description of the
        payload about to be sent, recorded with the spend in the ledger."""
        steps_taken = max(int(steps_taken), 1)
        if self.budget is not None:
            try:
                decision = self.budget.commit_round(self.dataset_id, plan.noise_multiplier, plan.sample_rate,
                                                    steps_taken)
            except BudgetExceeded as err:
                self.ledger.record_decision(err.decision, job_id=self.job_id, round_index=round_index)
                raise RoundRefused(f"privacy budget: {err.decision.reason}") from None
            epsilon = decision.epsilon_after
        else:
            decision = None
            self._local_accountant.step(plan.noise_multiplier, plan.sample_rate, steps_taken)
            epsilon = self._local_accountant.get_epsilon(self.delta)
        if not math.isfinite(epsilon):
            raise RoundRefused("epsilon is unbounded (zero noise); nothing is sent")
        metrics = {"dp_epsilon": float(epsilon), "dp_delta": float(self.delta),
                   "dp_noise_multiplier": float(plan.noise_multiplier), "dp_sample_rate": float(plan.sample_rate),
                   "dp_steps": float(steps_taken)}
        if decision is not None:
            egress = describe(metrics) if describe else None
            self.ledger.record_decision(decision, job_id=self.job_id, round_index=round_index, egress=egress)
        return metrics

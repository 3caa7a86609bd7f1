"""The site admin's privacy policy (``<site workspace>/ai4hi/site_policy.yaml``).

It is set by the site, not by jobs, and enforced locally whatever a job asks: the budget
(:mod:`ai4hi_sdk.privacy.dp.budget`) refuses rounds that would exceed ``max_epsilon_per_dataset``
(or a per-dataset override) or use less noise than ``min_noise_multiplier``; the site runtime
(:mod:`ai4hi_sdk.site.gate`) refuses job kinds not in ``allowed_job_kinds``, jobs without DP /
secure aggregation when the policy requires them (:meth:`SitePrivacyPolicy.job_refusal_reasons`)
and custom code whose SHA-256 is not in ``allowed_code_sha256``.

Example: ``site_templates/site_policy.example.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ai4hi_sdk.config.loader import load_yaml_model

SITE_POLICY = Path("ai4hi") / "site_policy.yaml"
"""Where the policy lives, relative to the site workspace."""

JobKind = Literal["train", "pretrain", "validate", "monitor"]
_DEFAULT_JOB_KINDS: tuple[JobKind, ...] = ("train", "validate")
#: job kinds that train on the site's data (DP and secure-aggregation requirements apply to both)
TRAINING_JOB_KINDS = ("train", "pretrain")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DatasetPolicy(BaseModel):
    """Per-dataset overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="epsilon budget of this dataset (default: max_epsilon_per_dataset)"
    )


class SitePrivacyPolicy(BaseModel):
    """Privacy policy of one site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon_per_dataset: float = Field(
        gt=0, allow_inf_nan=False, description="total epsilon any dataset may ever spend, over all jobs"
    )
    delta: float = Field(default=1e-5, gt=0, le=1e-3, allow_inf_nan=False,
                         description="delta of every guarantee this site gives")
    min_noise_multiplier: float = Field(
        default=0.5, ge=0, allow_inf_nan=False,
        description="rounds with less DP-SGD noise are refused; so is client-level DP alone with less noise, "
                    "at booking and again before unmasking (the noise the survivors added)"
    )
    accountant: Literal["rdp", "prv"] = Field(
        "rdp", description="how epsilon is composed: Renyi DP (fast) or PRV (tighter); switching re-accounts history")
    require_dp: bool = Field(True, description="training jobs without patient-level DP-SGD are refused")
    require_secure_aggregation: bool = Field(
        True, description="training jobs without secure aggregation are refused (the server may see one update)")
    allowed_job_kinds: list[JobKind] = Field(
        default_factory=lambda: list(_DEFAULT_JOB_KINDS),
        description="job kinds this site runs at all: train, pretrain (self-supervised pretraining on every image of "
                    "a modality, labelled or not: opt-in, not in the default), validate, monitor")
    datasets: dict[str, DatasetPolicy] = Field(
        default_factory=dict, description="per-dataset budgets by dataset id (`ai4hi privacy report` lists the ids)")
    min_count: int = Field(
        default=10, ge=2, le=10_000,
        description="k: the fewest studies any aggregate this site sends may describe (validation cells, a split's "
                    "metrics); a job may ask for more, never less")
    allowed_code_sha256: list[str] = Field(
        default_factory=list,
        description="SHA-256 of job code bundles (a job's `code:` files) this site runs; any other custom code is "
                    "refused before it is imported")
    min_secure_aggregation_sites: int = Field(
        default=3, ge=3, le=10_000,
        description="secure aggregation runs only with at least this many verified participants (this site included)")
    min_secure_aggregation_threshold: int = Field(
        default=2, ge=2, le=10_000,
        description="floor of the Shamir threshold t this site accepts, whatever the cohort; the rule below "
                    "raises it with the neighbourhood size m")
    secure_aggregation_threshold_rule: Literal["two_thirds", "majority"] = Field(
        default="two_thirds",
        description="two_thirds: t >= floor(2m/3) + 1 (safe against an active server with fewer than m/3 colluding "
                    "sites); majority: t >= floor(m/2) + 1 (an active server alone; lets 3 sites survive one dropout)")

    @field_validator("allowed_code_sha256")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if not _SHA256.match(digest):
                raise ValueError(f"'{digest}' is not a SHA-256 hex digest (64 lowercase hex characters)")
        return value

    def limit_for(self, dataset_id: str) -> float:
        """Epsilon budget of ``dataset_id``: its override, else ``max_epsilon_per_dataset``."""
        override = self.datasets.get(dataset_id)
        if override is not None and override.max_epsilon is not None:
            return override.max_epsilon
        return self.max_epsilon_per_dataset

    def job_refusal_reasons(self, job_kind: str, dp_enabled: bool, secure_aggregation: bool) -> list[str]:
        """Why this site must refuse a job (empty list: allowed). For the job executor, before any work."""
        reasons = []
        if job_kind not in self.allowed_job_kinds:
            reasons.append(
                f"job kind '{job_kind}' is not allowed by the site policy (allowed: {', '.join(self.allowed_job_kinds)})"
            )
        if self.require_dp and job_kind in TRAINING_JOB_KINDS and not dp_enabled:
            reasons.append("the site policy requires differential privacy (DP-SGD) for training jobs")
        if self.require_secure_aggregation and job_kind in TRAINING_JOB_KINDS and not secure_aggregation:
            reasons.append("the site policy requires secure aggregation for training jobs")
        return reasons


def load_site_policy(path: str | Path) -> SitePrivacyPolicy:
    """Read and validate a policy file; :class:`ai4hi_sdk.errors.ConfigError` names file, field and reason."""
    return load_yaml_model(path, SitePrivacyPolicy)

"""Declarative model-update policy (YAML, validated by pydantic with unknown keys rejected).

Example::

    replace_if:
      min_site_support: 30              # sites with fewer test examples are excluded (and said so)
      auroc_delta_lower_bound_gt: -0.01 # at every used site, lower CI bound of candidate-champion AUROC
      max_subgroup_gap_widening: 0.02   # at every used site, candidate gap - champion gap <= this
      pooled_delta_lower_bound_gt: null # optional: random-effects pooled delta lower bound must exceed
    retrain_if:
      drift_alarm: true                 # any site's drift alarm -> retrain
      auroc_below: 0.75                 # the model that would be deployed is below this at a used site
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ai4hi_sdk.config.loader import load_yaml_model


class ReplaceIf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_site_support: int = Field(30, ge=1)
    auroc_delta_lower_bound_gt: float = -0.01
    max_subgroup_gap_widening: float | None = Field(0.02, ge=0)
    pooled_delta_lower_bound_gt: float | None = None


class RetrainIf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drift_alarm: bool = True
    auroc_below: float | None = Field(0.75, ge=0, le=1)


class UpdatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replace_if: ReplaceIf = Field(default_factory=ReplaceIf)
    retrain_if: RetrainIf = Field(default_factory=RetrainIf)


def load_update_policy(path: str | Path) -> UpdatePolicy:
    """Load and validate a policy file; raises ``ConfigError(file, [(field, reason)])``."""
    return load_yaml_model(path, UpdatePolicy)

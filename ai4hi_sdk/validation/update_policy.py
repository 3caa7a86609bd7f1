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
    operating_point:                    # how a model version's threshold is chosen (validation splits)
      target: sensitivity               # sensitivity | specificity | youden
      value: 0.90
    recalibration: platt                # platt | temperature | none (fitted on the validation splits)
    safety_floors:                      # at the operating point, on each site's test split
      ci: 0.95                          # level of the binomial intervals
      interval: wilson                  # wilson | clopper-pearson
      sensitivity: {min: 0.80, lower_bound_min: 0.60, pooled_lower_bound_min: 0.70}
      specificity: {min: 0.50, lower_bound_min: 0.35, pooled_lower_bound_min: 0.40}
      max_subgroup_sensitivity_gap: 0.20
      max_ece: 0.15
      on_deployed_below_floor: retrain  # retrain | rollback
    decision_curve: {threshold_min: 0.05, threshold_max: 0.50, threshold_step: 0.05}

Every safety floor is on by default (guarantee 6 of the design: safe to deploy, or not deployed);
setting a single bound to ``null`` turns that bound off, visibly, in the signed policy.
"""

from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class OperatingPointTarget(BaseModel):
    """How the threshold is chosen from the summed validation histograms
    (:func:`~ai4hi_sdk.validation.operating_point.choose_operating_point`)."""

    model_config = ConfigDict(extra="forbid")
    target: Literal["sensitivity", "specificity", "youden"] = "sensitivity"
    value: float | None = Field(0.90, gt=0, le=1)

    @model_validator(mode="after")
    def _value_needed(self) -> "OperatingPointTarget":
        if self.target != "youden" and self.value is None:
            raise ValueError(f"target {self.target} needs a value")
        return self


class RateFloor(BaseModel):
    """Floors on a rate (sensitivity or specificity) at the operating point; ``null`` turns one off.

    ``min``: the point estimate at every used site and pooled; ``lower_bound_min``: the lower end
    of its binomial interval at every used site; ``pooled_lower_bound_min``: ... of the pooled counts.
    """

    model_config = ConfigDict(extra="forbid")
    min: float | None = Field(None, ge=0, le=1)
    lower_bound_min: float | None = Field(None, ge=0, le=1)
    pooled_lower_bound_min: float | None = Field(None, ge=0, le=1)


class SafetyFloors(BaseModel):
    """What a model must reach at its operating point before it is deployed, and what happens when
    the deployed one no longer does."""

    model_config = ConfigDict(extra="forbid")
    ci: float = Field(0.95, gt=0, lt=1)
    interval: Literal["wilson", "clopper-pearson"] = "wilson"
    sensitivity: RateFloor = Field(default_factory=lambda: RateFloor(min=0.80, lower_bound_min=0.60,
                                                                     pooled_lower_bound_min=0.70))
    specificity: RateFloor = Field(default_factory=lambda: RateFloor(min=0.50, lower_bound_min=0.35,
                                                                     pooled_lower_bound_min=0.40))
    #: largest difference in sensitivity between shown subgroups of one attribute, at every used site
    max_subgroup_sensitivity_gap: float | None = Field(0.20, ge=0, le=1)
    #: expected calibration error at every used site and pooled (n-weighted mean of the sites' ECE)
    max_ece: float | None = Field(0.15, ge=0, le=1)
    on_deployed_below_floor: Literal["retrain", "rollback"] = "retrain"


class DecisionCurve(BaseModel):
    """Threshold probabilities over which net benefit is reported (decision-curve analysis)."""

    model_config = ConfigDict(extra="forbid")
    threshold_min: float = Field(0.05, gt=0, lt=1)
    threshold_max: float = Field(0.50, gt=0, lt=1)
    threshold_step: float = Field(0.05, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> "DecisionCurve":
        if self.threshold_max < self.threshold_min:
            raise ValueError("threshold_max must be >= threshold_min")
        return self

    def thresholds(self) -> list[float]:
        from ai4hi_sdk.validation.net_benefit import threshold_grid

        return threshold_grid(self.threshold_min, self.threshold_max, self.threshold_step)


class UpdatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replace_if: ReplaceIf = Field(default_factory=ReplaceIf)
    retrain_if: RetrainIf = Field(default_factory=RetrainIf)
    operating_point: OperatingPointTarget = Field(default_factory=OperatingPointTarget)
    recalibration: Literal["platt", "temperature", "none"] = "platt"
    safety_floors: SafetyFloors = Field(default_factory=SafetyFloors)
    decision_curve: DecisionCurve = Field(default_factory=DecisionCurve)


def load_update_policy(path: str | Path) -> UpdatePolicy:
    """Load and validate a policy file; raises ``ConfigError(file, [(field, reason)])``."""
    return load_yaml_model(path, UpdatePolicy)

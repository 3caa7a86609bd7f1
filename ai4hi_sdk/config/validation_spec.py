"""Typed settings of a validation / monitoring job (the ``validation:`` block of ``jobs/continuous.yaml``).

They travel inside the job as ``ai4hi_validation.json`` and are read by every site and the server.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ai4hi_sdk.config.loader import StrictModel

Attribute = Literal["sex", "age_band", "manufacturer"]


class ValidationSpec(StrictModel):
    """How sites validate and monitor (identical at every site)."""

    threshold: float = Field(0.5, gt=0, lt=1, description="operating point: predict positive when P(class 1) >= this")
    min_count: int = Field(10, ge=2, le=10_000,
                           description="k: subgroup cells and calibration bins under k studies are suppressed")
    attributes: list[Attribute] = Field(default_factory=lambda: ["sex", "age_band", "manufacturer"],
                                        description="DICOM-header subgroups audited at each site")
    ci: float = Field(0.95, gt=0.5, lt=1, description="confidence level of every interval")
    calibration_bins: int = Field(10, ge=2, le=50)
    dp_count_epsilon: float | None = Field(None, gt=0, description="Laplace-noise shown subgroup counts with this epsilon")
    drift_alpha: float = Field(0.05, gt=0, lt=1, description="family-wise alarm level (Bonferroni over a site's tests)")
    drift_permutations: int = Field(500, ge=50, le=100_000, description="permutations of the MMD test")
    seed: int = Field(0, ge=0)
    timeout_s: int = Field(600, ge=10, description="seconds the server waits for site results of one task")

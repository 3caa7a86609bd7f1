"""Typed settings of a validation / monitoring job (the ``validation:`` block of ``jobs/continuous.yaml``).

They travel inside the job as ``ai4hi_validation.json`` and are read by every site and the server.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ai4hi_sdk.config.loader import StrictModel

Attribute = Literal["sex", "age_band", "manufacturer"]
_DEFAULT_ATTRIBUTES: tuple[Attribute, ...] = ("sex", "age_band", "manufacturer")


class OperatingPointSettings(StrictModel):
    """How the server chooses each model version's operating point from the sites' validation
    histograms (the update policy's ``operating_point`` and ``recalibration``; the continuous loop
    copies them from there)."""

    target: Literal["sensitivity", "specificity", "youden"] = "sensitivity"
    value: float | None = Field(0.90, gt=0, le=1, description="the rate the threshold keeps (None for youden)")
    recalibration: Literal["platt", "temperature", "none"] = "platt"


class ValidationSpec(StrictModel):
    """How sites validate and monitor (identical at every site)."""

    threshold: float = Field(0.5, gt=0, lt=1, description="fixed operating point (P(class 1) >= this), used only "
                             "without operating_point")
    operating_point: OperatingPointSettings | None = Field(
        None, description="choose each model's threshold (and recalibration) on the validation splits before the "
                          "test-split validation; None: the fixed threshold for both models")
    net_benefit_thresholds: list[float] | None = Field(
        None, description="threshold probabilities of the decision curve each site reports (None: none)")
    robustness: bool = Field(True, description="each site adds a robustness panel (classification and segmentation)")
    explanation_images: int = Field(8, ge=0, le=64, description="test images per site in the site-local saliency "
                                    "page (0: no page); the page never leaves the site")
    explanation_method: Literal["occlusion", "gradcam"] = "occlusion"
    explanation_layer: str | None = Field(None, description="module name Grad-CAM reads (both models)")
    min_count: int = Field(10, ge=2, le=10_000,
                           description="k: subgroup cells and calibration bins under k studies are suppressed")
    attributes: list[Attribute] = Field(default_factory=lambda: list(_DEFAULT_ATTRIBUTES),
                                        description="DICOM-header subgroups audited at each site")
    ci: float = Field(0.95, gt=0.5, lt=1, description="confidence level of every interval")
    calibration_bins: int = Field(10, ge=2, le=50)
    dp_count_epsilon: float | None = Field(None, gt=0, description="Laplace-noise shown subgroup counts with this epsilon")
    drift_alpha: float = Field(0.05, gt=0, lt=1, description="family-wise alarm level (Bonferroni over a site's tests)")
    drift_permutations: int = Field(500, ge=50, le=100_000, description="permutations of the MMD test")
    seed: int = Field(0, ge=0)
    timeout_s: int = Field(600, ge=10, description="seconds the server waits for site results of one task")

    @field_validator("net_benefit_thresholds")
    @classmethod
    def _probabilities(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(not 0 < t < 1 for t in value) or len(value) > 100):
            raise ValueError("1 to 100 threshold probabilities, each strictly between 0 and 1")
        return value

"""Typed schema of a continuous-training loop file (``jobs/continuous.yaml``).

Paths (``job``, ``policy``, ``site_policy``) are relative to the loop file.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ai4hi_sdk.config.loader import StrictModel, load_yaml_model
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.errors import ConfigError


class TrainOverrides(StrictModel):
    """``train`` fields of the job spec replaced for the loop (None: keep the spec's)."""

    rounds: int | None = Field(None, ge=1)
    local_epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    threads: int | None = Field(None, ge=1)
    augment: bool | None = None


class SynthData(StrictModel):
    """The synthetic consortium the demo loop runs on (``ai4hi data synth``)."""

    sites: int = Field(3, ge=1, le=16)
    studies_per_site: int = Field(160, ge=8, le=100_000)
    seed: int = Field(0, ge=0)


class DriftInjection(StrictModel):
    """New data arriving at every site (a new seed: new patients, same scanners), drifted at one site."""

    site: str = "hospital-2"
    seed: int = Field(1, ge=0, description="seed of the new data (new patients)")
    intensity_shift: float = Field(0.15, ge=-1, le=1, description="detector recalibration (+0.15 = +15 % of range)")
    manufacturer: str | None = Field(None, description="the drifted site's new scanner vendor (Manufacturer header)")


class ContinuousSpec(StrictModel):
    """train -> validate everywhere -> decide -> (new data, drift at one site) -> monitor -> decide
    -> retrain -> validate -> decide."""

    name: str = "continuous"
    intended_use: str = ""
    limitations: list[str] = Field(default_factory=list)
    job: str = Field(description="training job spec (YAML), relative to this file")
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    policy: str = Field("update_policy.yaml", description="update policy (YAML), relative to this file")
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    data: SynthData = Field(default_factory=SynthData)
    drift: DriftInjection = Field(default_factory=DriftInjection)
    site_policy: str | None = Field(None, description="privacy policy (YAML, relative to this file) installed at "
                                    "every simulated site; None: the SDK's default site policy")
    leave_one_site_out: bool = Field(True, description="after the first training, train one model per site on "
                                     "all the other sites and validate it at the site it never saw")
    timeout_s: int = Field(900, ge=30, description="limit of each simulated job")
    base_dir: str = Field("", exclude=True)

    def resolve(self, relative: str) -> Path:
        return Path(self.base_dir or ".") / relative


def load_continuous_spec(path: str | Path) -> ContinuousSpec:
    """Read and validate a loop file; its ``job`` and ``policy`` must exist (file/field/reason errors)."""
    spec = load_yaml_model(path, ContinuousSpec)
    spec = spec.model_copy(update={"base_dir": str(Path(path).resolve().parent)})
    problems = [(field, f"file not found: {spec.resolve(getattr(spec, field))}")
                for field in ("job", "policy", "site_policy")
                if getattr(spec, field) is not None and not spec.resolve(getattr(spec, field)).is_file()]
    if problems:
        raise ConfigError(str(path), problems)
    return spec

"""Typed schema of a job spec (``jobs/*.yaml``).

A job spec says what to train (task, trainer class, model arguments) and how (rounds, local
epochs, batch size, learning rate, minimum number of sites). It is validated with pydantic so a
mistake is reported with the file, the field and the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ai4hi_sdk.config.loader import StrictModel, load_yaml_model
from ai4hi_sdk.errors import ConfigError

_JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_CLASS_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class TrainSpec(StrictModel):
    """Local training settings, identical at every site."""

    rounds: int = Field(3, ge=1, le=10_000, description="federated rounds")
    local_epochs: int = Field(1, ge=1, le=1000, description="passes over the local train split per round")
    max_steps_per_round: int | None = Field(None, ge=1, description="cap on optimizer steps per round")
    batch_size: int = Field(16, ge=1, le=4096)
    lr: float = Field(0.01, gt=0, le=10)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0, description="base seed; each site and round derives its own")
    augment: bool = True
    threads: int | None = Field(None, ge=1, le=256, description="torch CPU threads per site (None: torch default)")


class DataSpec(StrictModel):
    """How a site turns its DICOM folder into tensors, and which of its images a job trains on.

    A labelled study often holds more than the job's images (a chest radiograph study: dose
    sheets, secondary captures, a CT); whatever falls outside ``modalities``, ``sop_classes`` and
    ``image_types`` is left out and counted by reason in the site's scan report, as are images
    holding a single value. Multi-frame objects are left out unless ``multiframe`` says how to use
    them. ``None`` accepts any value.

    Labels come from the site's ``labels.csv`` or, with ``labels_from: reports``, from its radiology
    reports (``reports.csv`` rows and DICOM SR objects): each site labels ``report_finding`` in its
    reports with the labeler rule set ``labeler_version`` (a site refuses a version it does not hold)
    and treats uncertain mentions as ``uncertain`` says. Nothing of a report leaves the site.
    """

    image_size: int = Field(64, ge=8, le=2048, description="images are resized to image_size x image_size pixels")
    label_column: str = "label"
    modalities: list[str] | None = Field(
        None, description="Modality values trained on, e.g. [CR, DX] (None: any)")
    sop_classes: list[str] | None = Field(
        None, description="SOP Class UIDs or pydicom keywords, e.g. [CTImageStorage] (None: any image class)")
    image_types: list[str] | None = Field(
        ["ORIGINAL"], description="accepted first values of ImageType: ORIGINAL and/or DERIVED (None: any)")
    multiframe: Literal["exclude", "first_frame", "volume"] = Field(
        "exclude", description="multi-frame objects: left out, their first frame used as a 2D image, "
                               "or (segmentation) every frame stacked into a volume by its functional groups")
    labels_from: Literal["labels", "reports"] = Field(
        "labels", description="labels.csv (hand labels) or weak labels from the site's reports")
    report_finding: str | None = Field(
        None, description="with labels_from: reports, the finding whose presence is the class (e.g. opacity)")
    uncertain: Literal["ignore", "positive", "negative"] = Field(
        "ignore", description="with labels_from: reports, studies whose report is uncertain about the finding: "
                              "left out, or labelled positive / negative")
    labeler_version: str | None = Field(
        None, description="with labels_from: reports, the labeler rule set every site uses (e.g. ai4hi-negex-1)")

    @model_validator(mode="after")
    def _report_labels_need_finding_and_version(self) -> "DataSpec":
        if self.labels_from == "reports":
            missing = [name for name in ("report_finding", "labeler_version") if not getattr(self, name)]
            if missing:
                raise ValueError(f"labels_from: reports needs {' and '.join(missing)} "
                                 "(e.g. report_finding: opacity, labeler_version: ai4hi-negex-1)")
        elif self.report_finding or self.labeler_version:
            raise ValueError("report_finding and labeler_version apply only with labels_from: reports")
        return self

    @field_validator("report_finding", "labeler_version")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", value):
            raise ValueError("must be 1-64 lowercase letters, digits, '.', '_' or '-'")
        return value

    @field_validator("modalities", "image_types")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        out = [v.strip().upper() for v in value]
        if not out or not all(out):
            raise ValueError("give at least one non-empty value, or leave the field out to accept any")
        return out

    @field_validator("sop_classes")
    @classmethod
    def _sop_class_uids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        from pydicom import uid as dicom_uid  # only when the field is given: keeps `--help` light

        out = []
        for entry in value:
            text = entry.strip()
            if re.fullmatch(r"[0-9]+(\.[0-9]+)*", text):
                out.append(text)
                continue
            resolved = getattr(dicom_uid, text, None)
            if not isinstance(resolved, dicom_uid.UID) or resolved.type != "SOP Class":
                raise ValueError(f"'{text}' is neither a SOP Class UID nor a pydicom SOP class keyword "
                                 "(e.g. CTImageStorage, DigitalXRayImageStorageForPresentation)")
            out.append(str(resolved))
        if not out:
            raise ValueError("give at least one SOP class, or leave the field out to accept any")
        return out


class DPSGDSpec(StrictModel):
    """Patient-level DP-SGD (opacus) at every site: Poisson sampling, per-sample clipping, noise.

    Give ``noise_multiplier`` or ``target_epsilon`` (the epsilon the whole job may spend per
    site: the noise is calibrated over rounds x local epochs). ``delta`` and ``accountant`` default
    to the site's policy; the site's policy budget is enforced whatever the job says.
    """

    noise_multiplier: float | None = Field(None, ge=0, le=1000)
    target_epsilon: float | None = Field(None, gt=0, le=1000)
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient clipping norm (L2)")
    delta: float | None = Field(None, gt=0, le=1e-3)
    accountant: Literal["rdp", "prv"] | None = None
    grad_sample_mode: Literal["hooks", "functorch", "ew"] = Field(
        "hooks", description="how opacus computes per-sample gradients (see benchmarks/dp_overhead.py)")

    @model_validator(mode="after")
    def _one_noise_source(self) -> "DPSGDSpec":
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        return self


class ClientDPSpec(StrictModel):
    """Client-level (distributed) DP: each site clips its delta to L2 norm ``clip`` and adds
    Gaussian noise so that the sum over sites carries N(0, (noise_multiplier * clip)^2)."""

    clip: float = Field(gt=0)
    noise_multiplier: float = Field(ge=0, le=1000)


class SecureAggregationSpec(StrictModel):
    """SecAgg+ secure aggregation: the server sees only the sum of the sites' updates.

    Each delta element is clipped to ``[-clip, clip]`` and quantised to 32-bit fixed point; a
    site's weight (training examples, at most ``max_samples_per_site``) is folded in and sent as one
    more masked coordinate, so no site's update, size or (with ``secure_metrics``) metric leaves in
    the clear. ``neighbours`` (k) defaults to the full graph; ``threshold`` (t) to ``floor(2m/3) + 1``
    of the neighbourhood ``m`` (the site included), which keeps a site's two secrets apart against an
    active server with fewer than m/3 colluding sites. The job only *asks* for t: every site refuses
    a round whose t is below its own floor (site policy ``min_secure_aggregation_threshold`` and
    ``secure_aggregation_threshold_rule``), so a lower t (e.g. 2 of 3, to survive one dropout) needs
    every site's policy to allow it. The server and every site translate this section into the
    protocol's one configuration (``ai4hi_sdk.privacy.secagg.settings.protocol_config``).
    """

    neighbours: int | None = Field(None, ge=2, description="k of the k-regular masking graph (default: all)")
    threshold: int | None = Field(
        None, ge=2,
        description="shares needed to unmask (default: floor(2m/3) + 1 of the neighbourhood m); each site refuses "
                    "a t below its policy's floor")
    clip: float = Field(1.0, gt=0, le=1e6, description="per-element clip of the delta before quantisation")
    max_samples_per_site: int = Field(
        10_000, ge=1, le=10_000_000,
        description="public bound on any site's training examples; the aggregate's precision scales with "
                    "n_sites x max_samples_per_site / total examples")
    secure_metrics: bool = Field(True, description="training metrics travel masked too (consortium means only)")
    cipher: Literal["aes-128-ctr", "aes-256-ctr", "chacha20"] = "aes-128-ctr"
    key_timeout_s: float = Field(120, gt=0, le=86_400, description="wait for keys/shares/unmask replies")


class PrivacySpec(StrictModel):
    """Privacy protections the job asks for (a site's policy may demand more)."""

    dp_sgd: DPSGDSpec | None = None
    client_dp: ClientDPSpec | None = None
    secure_aggregation: SecureAggregationSpec | None = None


#: the trainer of ``task: pretrain`` when the spec names none
PRETRAIN_TRAINER = "ai4hi_sdk.foundation.trainers:MAEPretrainTrainer"
IMAGE_REPORT_TRAINER = "ai4hi_sdk.foundation.image_report:ImageReportTrainer"

#: training methods whose loss couples the examples of a batch (contrastive): per-example DP-SGD does
#: not bound one patient's influence on such a loss
BATCH_COUPLED_METHODS = frozenset({"image_report"})


class JobSpec(StrictModel):
    """A federated job: what to train, on which task, for how long."""

    name: str
    # a name, not a closed list: task kinds are registered in ai4hi_sdk.tasks.registry (config/ imports
    # nothing else of the SDK; load_checked_job_spec checks the name against the registry)
    task: str = Field(
        "classification", pattern=r"^[a-z][a-z0-9_]*$",
        description="the task kind (registered in ai4hi_sdk.tasks.registry): classification, segmentation, or "
                    "pretrain (output: a backbone with its card; a site's policy must allow the job kind "
                    "'pretrain'): masked autoencoding on every train-split image of the declared modalities, "
                    "labelled or not, or with method: image_report image-report contrastive pretraining")
    method: Literal["supervised", "image_report"] = Field(
        "supervised", description="supervised (per-example loss) or image_report (image-report contrastive "
                                  "pretraining: client-level DP and secure aggregation, never DP-SGD)")
    trainer: str = Field("ai4hi_sdk.trainers.classification:ClassificationTrainer", description="module:Class")
    model: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the trainer's model")
    train: TrainSpec = Field(default_factory=TrainSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    min_sites: int = Field(2, ge=1, le=1000)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    code: list[str] = Field(
        default_factory=list,
        description="extra .py files (relative to this spec) shipped to every site, e.g. a custom trainer",
    )
    #: folder of the spec file; set by load_job_spec, used to resolve ``code``
    base_dir: str = Field(".", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _task_default_trainer(cls, data: Any) -> Any:
        if isinstance(data, dict) and "trainer" not in data and data.get("task") == "pretrain":
            trainer = IMAGE_REPORT_TRAINER if data.get("method") == "image_report" else PRETRAIN_TRAINER
            data = {**data, "trainer": trainer}
        return data

    @model_validator(mode="after")
    def _pretraining_learns_from_images_alone(self) -> "JobSpec":
        if self.task == "pretrain" and self.data.labels_from != "labels":
            raise ValueError("task: pretrain uses no labels: leave data.labels_from at its default")
        return self

    @model_validator(mode="after")
    def _report_labels_classify(self) -> "JobSpec":
        if self.data.labels_from == "reports" and self.task != "classification":
            raise ValueError("data.labels_from: reports gives study-level class labels: task must be classification")
        return self

    @model_validator(mode="after")
    def _contrastive_needs_client_level_dp(self) -> "JobSpec":
        if self.method in BATCH_COUPLED_METHODS:
            if self.privacy.dp_sgd is not None:
                raise ValueError(f"method {self.method}: a contrastive loss couples the examples of a batch, so "
                                 "per-example DP-SGD does not bound one patient's influence; use privacy.client_dp "
                                 "with privacy.secure_aggregation instead of privacy.dp_sgd")
            if self.privacy.client_dp is None:
                raise ValueError(f"method {self.method} needs privacy.client_dp (client-level DP; per-example "
                                 "DP-SGD does not apply to a contrastive loss)")
        return self

    @model_validator(mode="after")
    def _secure_aggregation_needs_two_survivors(self) -> "JobSpec":
        # a "sum" of one update is that update; the protocol itself needs 3 sites to exchange keys
        if self.privacy.secure_aggregation is not None and self.min_sites < 2:
            raise ValueError("privacy.secure_aggregation needs min_sites >= 2 (the sum of one update is the update)")
        return self

    def code_paths(self) -> list[Path]:
        """Absolute paths of the ``code`` files."""
        return [Path(self.base_dir, entry).resolve() for entry in self.code]

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _JOB_NAME.match(value):
            raise ValueError("must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit")
        return value

    @field_validator("trainer")
    @classmethod
    def _check_trainer(cls, value: str) -> str:
        if not _CLASS_PATH.match(value):
            raise ValueError("must look like 'package.module:ClassName'")
        return value

    @field_validator("code")
    @classmethod
    def _check_code(cls, value: list[str]) -> list[str]:
        for entry in value:
            if Path(entry).is_absolute() or ".." in Path(entry).parts or not entry.endswith(".py"):
                raise ValueError(f"'{entry}' must be a .py file path relative to the job spec, inside its folder")
        return value

    def with_overrides(self, **train_overrides: Any) -> "JobSpec":
        """Copy with some ``train`` fields replaced (None values are ignored)."""
        changes = {k: v for k, v in train_overrides.items() if v is not None}
        if not changes:
            return self
        return self.model_copy(update={"train": self.train.model_copy(update=changes)})


def load_job_spec(path: str | Path) -> JobSpec:
    """Read and validate a job spec YAML file (raises ConfigError naming file, field, reason).

    Besides the schema, checks that every ``code`` file exists inside the spec's folder (a symlink
    whose target leaves the folder is refused: it would ship that target to every site). Whether
    the trainer imports is checked by :func:`ai4hi_sdk.jobs.spec.load_checked_job_spec`.
    """
    spec = load_yaml_model(path, JobSpec)
    spec = spec.model_copy(update={"base_dir": str(Path(path).resolve().parent)})
    problems: list[tuple[str, str]] = []
    base = Path(spec.base_dir).resolve()
    for index, (entry, code_path) in enumerate(zip(spec.code, spec.code_paths())):
        if not code_path.is_relative_to(base):
            problems.append((f"code.{index}", f"'{entry}' resolves to {code_path}, outside the job's folder {base} "
                                              "(a symlink?); copy the file into the job's folder"))
        elif not code_path.is_file():
            problems.append((f"code.{index}", f"file not found: {code_path}"))
    if problems:
        raise ConfigError(str(path), problems)
    return spec

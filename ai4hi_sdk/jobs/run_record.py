"""Typed run records: ``metrics.json`` of a training job and ``validation.json`` of a validation /
monitoring job (pure pydantic, no NVFlare, no torch).

The server's controllers build their record through these models and write it as JSON; the
simulator runner (:mod:`ai4hi_sdk.jobs.simulate`, :mod:`ai4hi_sdk.jobs.validate`) and the download of
a deployed job (:mod:`ai4hi_sdk.deploy.results`) complete it; the CLI, the continuous loop and the
deployment tooling read it back through them. The reference pages ``docs/reference/metrics-json.md``
and ``validation-json.md`` are generated from the field descriptions below.

On disk a record keeps exactly the keys it was given (:meth:`RecordModel.to_json_dict` leaves out
fields never set), so a field that does not apply is absent, not ``null``. Every field the SDK
writes is typed and checked (strict: no string is taken for a number); keys this version does not
know (a record written by another SDK version) are kept as they are and written back unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from ai4hi_sdk.errors import UserError

#: a metric value as a site sent it (an int stays an int on disk)
Number = int | float
#: metric name -> value
Metrics = dict[str, Number]

RecordT = TypeVar("RecordT", bound="RecordModel")
#: how a training job ended (or that it still runs)
TrainingStatus = Literal["running", "completed", "stopped", "failed", "aborted"]
ValidationStatus = Literal["running", "completed", "failed"]


class RecordError(UserError):
    """A run record that does not match its schema (names the file, the field and the reason)."""


class RecordModel(BaseModel):
    """Base of every record model: strict types, unknown keys kept (records of other SDK versions)."""

    model_config = ConfigDict(strict=True, extra="allow")

    def to_json_dict(self) -> dict[str, Any]:
        """The record as it is written: only the fields that were set, unknown keys included."""
        return self.model_dump(exclude_unset=True)

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True)

    def write(self, path: str | Path) -> None:
        """Write atomically (a reader polling the file never sees half a record)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls: type[RecordT], data: Mapping[str, Any] | BaseModel, source: str = "record") -> RecordT:
        """Validate a parsed record (``source`` names it in errors); a model is returned as it is."""
        if isinstance(data, cls):
            return data
        if isinstance(data, BaseModel):
            data = data.model_dump(exclude_unset=True)
        if not isinstance(data, Mapping):
            raise RecordError(f"{source}: not a {cls.__name__} (expected a JSON object, got {type(data).__name__})")
        try:
            return cls.model_validate(dict(data))
        except pydantic.ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                                 for e in err.errors()[:5])
            raise RecordError(f"{source}: not a valid {cls.__name__} ({problems})") from None

    @classmethod
    def read(cls: type[RecordT], path: str | Path) -> RecordT:
        """Read and validate a record file; a missing, unreadable or invalid one raises RecordError."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise RecordError(f"{path}: cannot read the record ({err})") from None
        return cls.load(data, source=str(path))


# ---------------------------------------------------------------------------------------------------
# what sites answered: refusals and rejections (shared by both records)


class PrivacyPosition(RecordModel):
    """A refusing site's privacy position, as the site stated it with its refusal (a value the site
    did not state is null: nothing is made up)."""

    dataset_id: str | None = Field(description="the site's dataset the budget is booked on")
    epsilon_spent: Number | None = Field(description="epsilon the site has spent on that dataset (all jobs)")
    epsilon_limit: Number | None = Field(description="the site policy's epsilon limit for that dataset")
    delta: Number | None = Field(description="the delta of the site's accounting")


class Refusal(RecordModel):
    """A site refused a task (its policy, its privacy budget, a protocol check): its reason, and
    nothing of the task's work left the site."""

    site: str
    reason: str = Field(description="the site's reason (at most 1000 characters)")
    round: int | None = Field(None, description="training: the round refused")
    task: str | None = Field(None, description="validation jobs: the task refused (ai4hi_cross_validate, ...)")
    privacy: PrivacyPosition | None = Field(None, description="the site's privacy position, if it stated it")


class Rejection(RecordModel):
    """The server rejected a site's result (malformed, wrong round, duplicate, bad protocol
    message, ...) and did not use it."""

    site: str
    reason: str
    round: int | None = Field(None, description="training: the round of the result")
    step: str | None = Field(None, description="secure aggregation: the protocol step (advertise, share, input, "
                                               "consistency, unmask)")
    task: str | None = Field(None, description="validation jobs, and a training job's final validation: the task")


# ---------------------------------------------------------------------------------------------------
# metrics.json


class ValidationSummary(RecordModel):
    """The global model validated at each site's validation split (aggregates of at least the
    site's k studies)."""

    sites: dict[str, Metrics] = Field(default_factory=dict, description="per site: its metrics (val_auroc, "
                                                                         "val_loss, val_samples, ...)")
    weighted_mean: dict[str, Number] = Field(default_factory=dict,
                                             description="each metric's mean over the sites, weighted by val_samples "
                                                         "(val_samples: their sum)")


class RoundRecord(RecordModel):
    """One federated round."""

    round: int = Field(description="0-based round index")
    status: Literal["completed", "abandoned"] = Field(
        description="completed (the global model moved) or abandoned (too few good results: the last good model is "
                    "kept)")
    sites: dict[str, Metrics] = Field(
        default_factory=dict,
        description="per site whose result was used: the metrics that reached the server (plain FedAvg: the site's "
                    "declared metrics; secure aggregation: only what leaves in the clear, e.g. dp_epsilon)")
    seconds: float | None = Field(None, description="wall-clock seconds of the round at the server")
    reason: str | None = Field(None, description="secure aggregation: why the round was abandoned")
    weights: dict[str, int] | None = Field(None, description="plain FedAvg: each site's weight (training examples)")
    global_validation: ValidationSummary | None = Field(
        None, description="the validation of the global model this round produced (reported by the sites with the "
                          "next round, or by the final validation)")
    dropped: list[str] | None = Field(None, description="secure aggregation: sites that dropped out after sending keys")
    total_weight: int | None = Field(None, description="secure aggregation: the survivors' training examples, summed "
                                                       "(per-site sizes never leave the sites)")
    threshold: int | None = Field(None, description="secure aggregation: shares needed to unmask (t)")
    consortium_metrics: dict[str, Number] | None = Field(
        None, description="secure aggregation: each masked metric's mean over the survivors that reported it")
    quantisation_error_bound: float | None = Field(
        None, description="secure aggregation: per-element bound on |mean delta - weighted mean of the clipped deltas|")


class InitialModel(RecordModel):
    """The round-0 global model."""

    source: str = Field(description="seeded (the spec's train.seed), or ai4hi_initial_model.pt shipped with the job "
                                    "(warm start)")
    sha256: str = Field(description="sha256 of the round-0 global model (ai4hi_sdk.privacy.egress.describe_payload)")


class Exchange(RecordModel):
    """What one site uploads per round (the trainer's exchanged tensors) against the whole model."""

    tensors: float
    elements: float
    bytes: float = Field(description="float32 bytes of the exchanged values")
    full_model_elements: float = Field(description="floating-point values of the whole model (adapters excluded)")
    percent: float = Field(description="elements as a percentage of full_model_elements")


class BaseCheckpoint(RecordModel):
    """The base checkpoint (backbone) the job adapts; each site verified its own copy."""

    sha256: str


class SecureAggregationRun(RecordModel):
    """How the job's secure aggregation ran."""

    clip: float = Field(description="per-element clip of the delta before quantisation")
    payload_length: int = Field(description="uint32 coordinates of each site's masked vector")
    max_samples_per_site: int = Field(description="public bound on a site's training examples")
    rejected: list[Rejection] = Field(default_factory=list,
                                      description="protocol messages the server rejected, with step and reason")
    server_checks_signatures: bool = Field(
        description="the server checked key and consistency signatures against its kit's rootCA.pem (sites always do)")


class LabelAgreement(RecordModel):
    """Weak labels (from reports) against hand labels: aggregates of at least k studies per site."""

    sites: dict[str, Metrics] = Field(description="per site: weak_label_studies, weak_label_agreement, "
                                                  "weak_label_kappa")
    studies: Number = Field(description="studies with both labels, over those sites")
    pooled_agreement: float = Field(description="agreement over those sites, weighted by their studies")


class DatasetPrivacy(RecordModel):
    """Epsilon spent on one of a site's datasets."""

    epsilon_spent: Number | None = Field(description="epsilon spent on the dataset, all jobs (null: not reported)")
    delta: Number | None
    rounds: int = Field(description="rounds that spent budget (simulation: from the ledger; deployment: rounds with "
                                    "a DP update)")
    refused: int = Field(description="rounds or tasks refused")
    epsilon_limit: Number | None = Field(None, description="deployment: the limit, if the site stated it")
    epsilon_remaining: Number | None = Field(None, description="deployment: limit - spent, where both are known")


class SitePrivacy(RecordModel):
    """A site's privacy summary for the lead. Simulation: from the site's own ledger (chain
    verified, copied to privacy/<site>.jsonl). Deployment: as the site reported it with its updates
    or refusals (its ledger stays at the site)."""

    ledger: str | None = Field(description="the ledger copy, relative to the result folder (null: at the site)")
    chain_ok: bool | None = Field(description="the ledger's hash chain verified (null: not checked here)")
    datasets: dict[str, DatasetPrivacy] = Field(description="per dataset ('reported' when the site named none)")
    source: str | None = Field(None, description="deployment: where the figures come from")


class TrainingRunRecord(RecordModel):
    """The record of a training job: written by the server as ``ai4hi_metrics.json`` in its run
    folder after every round, completed into ``result/metrics.json`` by ``ai4hi job simulate`` and
    ``ai4hi job download``."""

    status: TrainingStatus = Field(
        description="running; completed; stopped (sites refused, e.g. privacy budget); failed; aborted")
    reason: str | None = Field(None, description="how the job ended, e.g. '3 rounds' or why it failed")
    sites: list[str] = Field(default_factory=list, description="the job's fixed site set")
    num_rounds: int | None = Field(None, description="rounds the job asked for")
    min_sites: int | None = Field(None, description="good site results a round needs")
    rounds: list[RoundRecord] = Field(default_factory=list, description="one entry per round that ran")
    refused: list[Refusal] = Field(default_factory=list, description="every refusal of a site, as it happened")
    rejected: list[Rejection] = Field(default_factory=list, description="every site result the server rejected")
    initial_model: InitialModel | None = None
    exchange: Exchange | None = None
    base_checkpoint: BaseCheckpoint | None = None
    secure_aggregation: SecureAggregationRun | None = Field(None, description="jobs with secure aggregation")
    final_validation: ValidationSummary | None = Field(
        None, description="the final global model validated at each site (also the last round's global_validation)")
    label_agreement: LabelAgreement | None = Field(None, description="jobs labelled from reports, where sites sent it")
    backbone: dict[str, Any] | None = Field(
        None, description="pretraining jobs: the backbone written to result/backbone/ (folder, sha256, version, card)")
    # --- added when the results are collected (simulation or download)
    global_model: str | None = Field(None, description="the final global model file in the result folder")
    receipt_log: str | None = Field(None, description="what the server received (descriptions only), "
                                                      "receipts.jsonl")
    tensorboard: str | None = Field(None, description="simulation: the round metrics streamed to TensorBoard")
    egress_logs: dict[str, dict[str, str]] | None = Field(
        None, description="simulation: per site, its hash-chained egress log: copy (egress/<site>.jsonl in the result "
                          "folder) and site_log (the site's own); a deployment: empty, the logs stay at the sites")
    privacy: dict[str, SitePrivacy] | None = Field(None, description="per site: epsilon spent")
    initial_model_file: str | None = Field(None, description="simulation with a warm start: the model file given")
    initial_model_file_sha256: str | None = None
    site_policies: dict[str, str] | None = Field(None, description="simulation: each site's policy, kept or installed")
    site_backbones: dict[str, str] | None = Field(None, description="simulation: each site's base checkpoint, kept or "
                                                                    "installed")
    previous_results_kept: str | None = Field(
        None, description="simulation: the run failed and the previous result folder was kept (this record went to "
                          "result.failed/)")
    job_id: str | None = Field(None, description="deployment: the NVFlare job id")
    nvflare_status: str | None = Field(None, description="deployment: how NVFlare ended the job")
    server_download: str | None = Field(None, description="deployment: the server's job download folder")

    def completed_rounds(self) -> list[RoundRecord]:
        return [r for r in self.rounds if r.status == "completed"]

    def refused_in(self, round_index: int) -> list[Refusal]:
        return [r for r in self.refused if r.round == round_index]


# ---------------------------------------------------------------------------------------------------
# validation.json


class OperatingPointChoice(RecordModel):
    """A model's operating point for a validation: the model version's own, or chosen from the
    sites' k-merged validation histograms."""

    source: str
    operating_point: dict[str, Any] | None = Field(
        description="threshold, target, value, rates on the validation splits, sites, k "
                    "(ai4hi_sdk.validation.operating_point.operating_point_from_payloads)")
    calibration: dict[str, Any] | None = Field(description="the recalibration (method, a, b, ECE before/after)")
    error: str | None = Field(None, description="why no operating point could be chosen")
    calibration_error: str | None = Field(None, description="why no recalibration could be fitted")


class ValidationRecord(RecordModel):
    """The record of a validation / monitoring job: written by the server as
    ``ai4hi_validation.json``, completed into ``result/validation.json`` by the simulator runner."""

    status: ValidationStatus
    reason: str | None = Field(None, description="why the job failed")
    sites: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list, description="validate and/or monitor")
    refused: list[Refusal] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list, description="results rejected, or missing at the timeout")
    champion_sha256: str | None = None
    candidate_sha256: str | None = None
    candidate_sha256_by_site: dict[str, str] | None = Field(
        None, description="one candidate per site (leave-one-site-out): each site's candidate")
    operating_points: dict[str, OperatingPointChoice] | None = Field(
        None, description="candidate / champion: the operating point each was validated at")
    operating_point_seconds: float | None = None
    validation: dict[str, dict[str, Any]] | None = Field(
        None, description="per site: its aggregate report of the test split (candidate, champion, paired, meta, ...; "
                          "ai4hi_sdk.validation.site_report)")
    validation_seconds: float | None = None
    drift: dict[str, dict[str, Any]] | None = Field(None, description="monitoring: per site, its drift statistics")
    monitor_seconds: float | None = None
    # --- added by the simulator runner
    receipt_log: str | None = None
    egress_logs: dict[str, dict[str, str]] | None = Field(
        None, description="per site, its egress log: copy (egress/<site>.jsonl) and site_log (the site's own)")
    seconds: float | None = Field(None, description="the simulation's wall-clock seconds")


def as_training_record(record: TrainingRunRecord | Mapping[str, Any], source: str = "metrics.json"
                       ) -> TrainingRunRecord:
    """``record`` as a :class:`TrainingRunRecord` (a parsed JSON object is validated)."""
    return TrainingRunRecord.load(record, source)


def as_validation_record(record: ValidationRecord | Mapping[str, Any], source: str = "validation.json"
                         ) -> ValidationRecord:
    """``record`` as a :class:`ValidationRecord` (a parsed JSON object is validated)."""
    return ValidationRecord.load(record, source)

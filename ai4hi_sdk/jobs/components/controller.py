"""Server-side workflow of an ai4hi training job (NVFlare adapter around the pure FedAvg core).

Differences from NVFlare's stock ``FedAvg`` loop, each for a reason:

* the site set is fixed once per job (later privacy protocols exchange keys with exactly it);
* every site result is checked (names, shapes, dtype, finiteness, sample count) and a malformed
  one is rejected with a logged reason instead of poisoning the average;
* a round with fewer than ``min_sites`` good results is abandoned and the **last good model is
  kept**; the job then ends cleanly with the reason recorded;
* averaging is weighted by each site's training-set size (classic FedAvg), in float64;
* after the last round every site validates the final model on its held-out validation split;
* results are written to the run folder as ``global_model.pt`` (state dict) and
  ``ai4hi_metrics.json`` (per round: per-site training/validation metrics, global metrics), a
  :class:`~ai4hi_sdk.jobs.run_record.TrainingRunRecord`; every site result is sorted into refused,
  dropped, rejected or accepted by :func:`~ai4hi_sdk.jobs.site_results.classify_result`;
* each round's metrics that reached the server (aggregates only) are streamed to TensorBoard event
  files in the run folder's ``tensorboard/`` as the job runs
  (:class:`~ai4hi_sdk.jobs.live_metrics.RoundMetricsWriter`), for the lead to watch;
* the initial global model is the spec's seeded model, unless the job ships a state dict of the
  same architecture as ``ai4hi_initial_model.pt`` next to its spec (warm start, e.g. from the
  deployed champion: ``simulate(..., initial_model=...)``); the record's ``initial_model`` gives
  its source and the sha256 of the round-0 global model;
* only the trainer's exchanged tensors (``exchanged_names()``: e.g. adapters and head) are sent
  and averaged; the record's ``exchange`` states the upload per round against the whole model. A
  job on a base checkpoint must ship its round-0 state (the server holds no backbone);
* a pretraining job (``task: pretrain``) ends by writing the global MAE's encoder as a backbone
  with its provenance card into the run folder's ``backbone/`` (record: ``backbone``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.fedavg import FedAvg

from ai4hi_sdk.jobs.aggregation import apply_delta, check_update, weighted_average, weighted_metric_means
from ai4hi_sdk.jobs.run_record import (BaseCheckpoint, Exchange, InitialModel, LabelAgreement, RoundRecord,
                                       SecureAggregationRun, TrainingRunRecord, TrainingStatus, ValidationSummary)
from ai4hi_sdk.jobs.site_results import classify_result, duplicate, metrics_problem, site_of, wrong_round
from ai4hi_sdk.trainers.state import exchange_size
from ai4hi_sdk.jobs.wire import (APP_DATA_DIR, BACKBONE_RESULT_DIR, BASE_CHECKPOINT_SHA256_KEY, INITIAL_MODEL_FILE,
                                 METRICS_FILE, MODEL_FILE, NUM_SAMPLES_KEY, NUM_SITES_KEY, TRAIN_TASK, VALIDATE_TASK,
                                 WEAK_LABEL_COUNT, WEAK_LABEL_METRICS)


def initial_state_mismatch(state: Any, reference: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` cannot be the initial global model of a job whose freshly built model has the
    exchanged state ``reference`` (None: it can). Entries that are not floating point (e.g. BatchNorm
    counters) are not exchanged and are ignored."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        return "not a state dict (a mapping of names to tensors)"
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    missing, unexpected = sorted(set(reference) - set(floats)), sorted(set(floats) - set(reference))
    if missing or unexpected:
        return (f"not the job's architecture: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for name, ref in reference.items():
        if tuple(floats[name].shape) != tuple(ref.shape):
            return f"'{name}' has shape {tuple(floats[name].shape)}, the job's model has {tuple(ref.shape)}"
        if not bool(torch.isfinite(floats[name]).all()):
            return f"'{name}' has non-finite values"
    return None


class Ai4hiFedAvg(FedAvg):
    """FedAvg over a fixed site set with update checks, last-good-model semantics and a final
    validation round.

    Args:
        job: the job spec (JSON form); the server builds the initial model from it with the
            spec's seed, exactly as every site would.
        code: the job's custom code bundle (the lead's own code, installed in the server's run
            folder to build the model), ``{}`` for SDK trainers.
        num_rounds: training rounds.
        min_sites: minimum good site results for a round to count (and sites to start). The server
            waits for every site of the job until ``train_timeout``; sites missing then are
            treated as dropped for that round.
        train_timeout: seconds to wait for site results in one training round (0 = no limit).
        validate_timeout: seconds to wait for the final validation round (0 = no limit).
    """

    def __init__(self, job: dict, num_rounds: int, min_sites: int, code: dict | None = None,
                 train_timeout: int = 3600, validate_timeout: int = 600):
        super().__init__(num_clients=min_sites, num_rounds=num_rounds, persistor_id="", task_name=TRAIN_TASK,
                         save_filename=MODEL_FILE,
                         # a failing site must not abort the job: this workflow decides with min_sites
                         ignore_result_error=True)
        self.job = job
        self.code = code or {}
        self.min_sites = min_sites
        self.train_timeout = train_timeout
        self.validate_timeout = validate_timeout
        self._record = TrainingRunRecord(status="running")
        self._declared_metrics: frozenset[str] | None = None
        self._spec: Any = None
        self._trainer: Any = None
        self._exchange: dict[str, float] = {}
        self._initial_source = "seeded (the spec's train.seed)"
        self._live: Any = None  # TensorBoard writer, created with the run folder

    # ------------------------------------------------------------------ persistence
    def load_model(self) -> FLModel:
        from ai4hi_sdk.config.job_spec import JobSpec

        spec = self._spec = JobSpec.model_validate(self.job)
        trainer = self._trainer = server_trainer(spec, self.code, Path(self.get_run_dir()))
        self._declared_metrics = trainer.declared_metrics()
        state = trainer.initial_state()  # the exchanged tensors only (e.g. adapters and head)
        self._exchange = exchange_size(trainer.model, list(state))
        given = self._data_dir() / INITIAL_MODEL_FILE
        self._initial_source = "seeded (the spec's train.seed)"
        base = spec.model.get(BASE_CHECKPOINT_SHA256_KEY)
        if base is not None and not given.is_file():  # the seeded values would miss the backbone's weights
            raise ValueError(f"the job adapts the base checkpoint {base} but ships no {INITIAL_MODEL_FILE} computed "
                             "from it (export the job with the SDK: it ships one)")
        if given.is_file():  # warm start: checked again here, whatever wrote the file
            try:
                loaded = torch.load(given, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unreadable file fails the job the same way
                raise ValueError(f"{INITIAL_MODEL_FILE}: not a readable state dict: {err}") from None
            problem = initial_state_mismatch(loaded, state)
            if problem:
                raise ValueError(f"{INITIAL_MODEL_FILE}: {problem}")
            state = {name: loaded[name].float() for name in state}
            self._initial_source = f"{INITIAL_MODEL_FILE} (shipped with the job)"
        return FLModel(params=state, params_type=ParamsType.FULL)

    def save_model_file(self, model: FLModel, filepath: str) -> None:
        _atomic_torch_save({k: torch.as_tensor(v) for k, v in model.params.items()}, filepath)

    def _data_dir(self) -> Path:
        return Path(self.engine.get_workspace().get_app_dir(self.fl_ctx.get_job_id())) / APP_DATA_DIR

    def _write_record(self) -> None:
        self._record.write(Path(self.get_run_dir()) / METRICS_FILE)
        if self._live is None:
            from ai4hi_sdk.jobs.live_metrics import TENSORBOARD_DIR, RoundMetricsWriter

            self._live = RoundMetricsWriter(Path(self.get_run_dir()) / TENSORBOARD_DIR, warn=self.warning)
        self._live.update(self._record.to_json_dict())

    # ------------------------------------------------------------------ workflow
    def run(self) -> None:
        from nvflare.app_opt.pt.decomposers import TensorDecomposer
        from nvflare.fuel.utils import fobs

        from ai4hi_sdk.privacy.egress import describe_payload

        fobs.register(TensorDecomposer)
        sites = sorted(self.sample_clients(None))
        self._record = TrainingRunRecord(sites=sites, num_rounds=self.num_rounds, min_sites=self.min_sites,
                                         rounds=[], status="running", rejected=[], refused=[])
        try:
            state = {k: torch.as_tensor(v).float() for k, v in self.load_model().params.items()}
        except ValueError as err:
            self._finish("failed", f"initial model: {err}")
            return
        self._record.initial_model = InitialModel(source=self._initial_source, sha256=describe_payload(state)["sha256"])
        self._record.exchange = Exchange.load(self._exchange, "exchange")
        if self._spec.model.get(BASE_CHECKPOINT_SHA256_KEY) is not None:
            self._record.base_checkpoint = BaseCheckpoint(sha256=str(self._spec.model[BASE_CHECKPOINT_SHA256_KEY]))
        if len(sites) < self.min_sites:
            self._finish("failed", f"only {len(sites)} sites connected, job needs {self.min_sites}")
            return
        self.save_model(FLModel(params=state))
        if self._spec.privacy.secure_aggregation is not None:
            self._run_secure(state, sites)
            return
        completed = 0
        for round_index in range(self.num_rounds):
            if self.abort_signal.triggered:
                self._finish("aborted", "abort requested")
                return
            self.current_round = round_index
            started = time.time()
            results = self.send_model_and_wait(
                task_name=TRAIN_TASK,
                data=FLModel(params=state, params_type=ParamsType.FULL, current_round=round_index,
                             total_rounds=self.num_rounds, meta={NUM_SITES_KEY: len(sites)}),
                targets=sites, min_responses=len(sites), timeout=self.train_timeout)
            accepted = self._accept(results, state, round_index)
            used = {n: r["metrics"] for n, r in accepted.items()}
            seconds = round(time.time() - started, 3)
            refused_now = [r.site for r in self._record.refused_in(round_index)]
            sites = [site for site in sites if site not in refused_now]  # a refusing site is not asked again
            if len(accepted) < self.min_sites:
                self._record.rounds.append(RoundRecord(round=round_index, status="abandoned", sites=used,
                                                       seconds=seconds))
                why = f"round {round_index}: {len(accepted)} good site results, {self.min_sites} needed"
                if refused_now:
                    why += f" ({', '.join(refused_now)} refused for privacy policy or budget)"
                self._finish("stopped" if refused_now and not self._record.rejected else "failed",
                             why + "; the last good model is kept")
                return
            names = sorted(accepted)
            delta = weighted_average([accepted[n]["delta"] for n in names], [accepted[n]["weight"] for n in names])
            state = apply_delta(state, delta)
            self._attach_global_validation(round_index - 1, accepted)
            self._record.rounds.append(RoundRecord(round=round_index, status="completed", sites=used, seconds=seconds,
                                                   weights={n: accepted[n]["weight"] for n in names}))
            self.save_model(FLModel(params=state))
            completed += 1
            self._write_record()
        self._final_validation(state, sites)
        if self._export_backbone(state):
            self._finish("completed", f"{completed} rounds")

    def _run_secure(self, state: dict[str, torch.Tensor], sites: list[str]) -> None:
        """The training loop with secure aggregation: the server only ever holds the sum."""
        from ai4hi_sdk.jobs.components.secagg_server import SecureRounds
        from ai4hi_sdk.privacy.secagg.protocol import RoundAbandoned

        def log(level: str, message: str) -> None:
            (self.warning if level == "warning" else self.info)(message)

        try:
            secure = SecureRounds(self._spec, self.fl_ctx.get_job_id(), sites, state,
                                  self._declared_metrics if self._declared_metrics is not None else frozenset(),
                                  self.send_model_and_wait, self.engine.get_workspace().get_root_dir(), log)
        except ValueError as err:  # e.g. a payload that could overflow for this many sites
            self._finish("failed", f"secure aggregation cannot run on {len(sites)} sites: {err}")
            return
        self._record.secure_aggregation = SecureAggregationRun(
            clip=float(secure.codec.clip), payload_length=secure.codec.length,
            max_samples_per_site=secure.codec.max_weight,
            # the server checks key signatures against its kit's rootCA.pem
            server_checks_signatures=secure.verify is not None)
        # the same lists (assigned, not validated into copies): every rejection and refusal, protocol
        # steps included, is in the record as it happens
        self._record.secure_aggregation.rejected = secure.rejections
        self._record.refused = secure.refused
        completed = 0
        self.current_round = 0
        try:
            live = secure.setup(sites)
            for round_index in range(self.num_rounds):
                if self.abort_signal.triggered:
                    self._finish("aborted", "abort requested")
                    return
                if len(live) < self.min_sites:
                    raise RoundAbandoned(f"round {round_index}: {len(live)} sites hold keys and shares, "
                                         f"{self.min_sites} needed")
                self.current_round = round_index
                started = time.time()
                outcome = secure.train_round(state, round_index, self.num_rounds, self.train_timeout,
                                             min_inputs=self.min_sites)
                state = apply_delta(state, outcome.mean_delta)
                round_record = RoundRecord(
                    round=round_index, status="completed", seconds=round(time.time() - started, 3),
                    sites={n: outcome.clear_metrics.get(n, {}) for n in outcome.survivors},
                    dropped=outcome.dropped, total_weight=outcome.total_weight, threshold=outcome.threshold,
                    consortium_metrics=outcome.metric_means, quantisation_error_bound=outcome.error_bound)
                if outcome.metric_means and self._record.rounds:
                    self._record.rounds[-1].global_validation = ValidationSummary(sites={}, weighted_mean={
                        k[len("global_"):]: v for k, v in outcome.metric_means.items() if k.startswith("global_val_")})
                else:
                    self._attach_global_validation(round_index - 1, {n: {"metrics": m} for n, m in
                                                                     outcome.clear_metrics.items()})
                self._record.rounds.append(round_record)
                self.save_model(FLModel(params=state))
                completed += 1
                self._write_record()
                live = secure.next_participants
        except RoundAbandoned as err:
            self._record.rounds.append(RoundRecord(round=self.current_round, status="abandoned", reason=str(err)))
            refused = self._record.refused_in(self.current_round)
            self._finish("stopped" if refused else "failed",
                         f"{err}; nothing individual was revealed and the last good model is kept")
            return
        self._final_validation(state, live or sites)
        if self._export_backbone(state):
            self._finish("completed", f"{completed} rounds (secure aggregation)")

    def _accept(self, results: list[FLModel], state: dict[str, torch.Tensor], round_index: int) -> dict[str, dict]:
        accepted: dict[str, dict] = {}
        for result in results:
            delta: dict[str, torch.Tensor] = {}
            sorted_ = classify_result(result.meta, self._update_checks(result, state, round_index, accepted, delta),
                                      round_index=round_index)
            site = sorted_.site
            if sorted_.refusal is not None:
                self.warning(f"{site} refused round {round_index}: {sorted_.reason}")
                self._record.refused.append(sorted_.refusal)
            elif sorted_.rejection is not None:
                self.warning(f"rejected update from {site} in round {round_index}: {sorted_.reason}")
                self._record.rejected.append(sorted_.rejection)
            elif sorted_.outcome == "accepted":
                weight = int((result.meta or {})[NUM_SAMPLES_KEY])  # checked: a positive integer
                accepted[site] = {"delta": delta, "weight": weight, "metrics": dict(result.metrics or {})}
        return accepted

    def _update_checks(self, result: FLModel, state: dict[str, torch.Tensor], round_index: int,
                       accepted: dict[str, dict], delta: dict[str, torch.Tensor]) -> list:
        """A plain FedAvg result's checks, in order (the update's tensors land in ``delta``)."""
        def is_delta() -> str | None:
            return None if result.params_type == ParamsType.DIFF else \
                f"expected a model delta (DIFF), got {result.params_type}"

        def update() -> str | None:
            delta.update({k: torch.as_tensor(v) for k, v in (result.params or {}).items()})
            return check_update(delta, state, (result.meta or {}).get(NUM_SAMPLES_KEY), result.metrics,
                                self._declared_metrics)

        return [is_delta, wrong_round(result.current_round, round_index),
                duplicate(site_of(result.meta), accepted, "second result from the same site in one round"), update]

    def _attach_global_validation(self, round_index: int, accepted: dict[str, dict]) -> None:
        """Sites report ``global_val_*`` of the model they received, i.e. the output of the
        previous round: attach those to that round's record."""
        if round_index < 0 or not self._record.rounds:
            return
        per_site = {n: {k[len("global_"):]: v for k, v in r["metrics"].items() if k.startswith("global_val_")}
                    for n, r in accepted.items()}
        self._record.rounds[round_index].global_validation = ValidationSummary(
            sites=per_site, weighted_mean=weighted_metric_means(per_site, "val_samples"))

    def _final_validation(self, state: dict[str, torch.Tensor], sites: list[str]) -> None:
        results = self.send_model_and_wait(task_name=VALIDATE_TASK, data=FLModel(params=state), targets=sites,
                                           min_responses=len(sites), timeout=self.validate_timeout)
        per_site: dict[str, dict] = {}
        for result in results:  # refusals and drops are left out (not recorded: the training is done)
            metrics = dict(result.metrics or {})
            sorted_ = classify_result(result.meta, [metrics_problem(metrics)], task=VALIDATE_TASK)
            if sorted_.rejection is not None:
                self.warning(f"rejected the final validation of {sorted_.site}: {sorted_.reason}")
                self._record.rejected.append(sorted_.rejection)
            elif sorted_.outcome == "accepted":
                per_site[sorted_.site] = metrics
        evaluation = {n: {k: v for k, v in m.items() if k not in WEAK_LABEL_METRICS} for n, m in per_site.items()}
        record = ValidationSummary(sites=per_site, weighted_mean=weighted_metric_means(evaluation, "val_samples"))
        self._record.final_validation = record
        agreement = label_agreement_record(per_site)
        if agreement is not None:
            self._record.label_agreement = agreement
        if self._record.rounds:
            self._record.rounds[-1].global_validation = record

    def _export_backbone(self, state: dict[str, torch.Tensor]) -> bool:
        """A pretraining job's output: the backbone and its card in the run folder (False: the job
        failed to write it, and says why)."""
        if self._spec.task != "pretrain":
            return True
        from ai4hi_sdk.foundation.job_backbone import export_job_backbone

        try:
            self._record.backbone = export_job_backbone(
                self._trainer, state, self._record.to_json_dict(), Path(self.get_run_dir()) / BACKBONE_RESULT_DIR,
                job_id=str(self.fl_ctx.get_job_id()))
        except Exception as err:  # noqa: BLE001 - the job's output is missing: the job failed, with the reason
            self._finish("failed", f"the pretrained backbone could not be written: {type(err).__name__}: {err}")
            return False
        return True

    def _finish(self, status: TrainingStatus, reason: str) -> None:
        self._record.status = status
        self._record.reason = reason
        self._write_record()
        self._live.close()
        (self.info if status == "completed" else self.error)(f"ai4hi job {status}: {reason}")


def label_agreement_record(per_site: dict[str, dict[str, float]]) -> LabelAgreement | None:
    """``label_agreement`` of metrics.json: each site's weak-label agreement with its hand labels (only
    sites that sent it: at least k studies with both labels) and the agreement pooled over them,
    weighted by their studies. None when no site sent it."""
    sites = {n: {k: v for k, v in m.items() if k in WEAK_LABEL_METRICS} for n, m in per_site.items()}
    sites = {n: a for n, a in sites.items() if a.get(WEAK_LABEL_COUNT, 0) > 0 and "weak_label_agreement" in a}
    if not sites:
        return None
    studies = sum(a[WEAK_LABEL_COUNT] for a in sites.values())
    pooled = sum(a["weak_label_agreement"] * a[WEAK_LABEL_COUNT] for a in sites.values()) / studies
    return LabelAgreement(sites=sites, studies=studies, pooled_agreement=float(pooled))


def server_trainer(spec: Any, code: dict, run_dir: Path) -> Any:
    """The job's trainer on the server (model only), its code installed in the run folder."""
    from ai4hi_sdk.site.code_bundle import install_code
    from ai4hi_sdk.trainers.loading import load_trainer_class

    dirs = install_code(code, run_dir / "ai4hi_code") if code else []
    cls = load_trainer_class(spec.trainer, dirs, code.keys())
    return cls(spec, site_dir=None, site_name="server", device="cpu")


def _atomic_torch_save(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)

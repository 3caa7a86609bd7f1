"""The continuous validation and training loop on a synthetic consortium (``ai4hi continuous run``).

    synth data v1 -> train C1 -> validate C1 vs champion everywhere -> decide
      -> new data v2 at every site, drifted at one (intensity shift / scanner vendor)
      -> monitor the champion at every site -> decide (a drift alarm recommends retraining)
      -> retrain C2 on v2 -> validate C2 vs champion -> decide -> report

Every job is a real NVFlare simulation. All jobs share the sites' state (``WS/sites/<site>/ai4hi``:
privacy policy, budget and ledger, egress log, drift references, explanation pages), as a real
site keeps it. The first champion is the untrained initial model (a chance-level baseline, never
deployed). Every training job is warm-started from the champion at that moment (its weights are
the round-0 global model; the job's record must show the champion's sha256, else the loop stops).

Each validation first chooses the candidate's operating point (and the champion's, if its model
version has none yet) on the sites' validation splits, with the update policy's target and
recalibration; the model version keeps it (``history.json``: ``models.<m>.operating_point`` and
``.calibration``) and the test-split validation, the decision and the model card use it.

**Deployed** is not the same as champion: a model is deployed only by a REPLACE decision (every
replace rule and safety floor passed at its operating point). A deployed model measured below a
floor on new data is withdrawn (``on_deployed_below_floor: retrain``) or replaced by the previously
deployed model (``rollback``), so the loop never ends with a deployed model below a floor; "none"
is a valid answer.

With ``leave_one_site_out`` the first candidate's recipe is also trained once per site on all the
other sites (from the same initial model, on the same data) and validated at the site it never saw
(``models.<m>.leave_one_site_out``). Each decision is appended, signed, to
``WS/report/decisions.jsonl``; the report folder ``WS/report`` gets ``history.json``, the job
records, ``report.html`` and the model cards.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ai4hi_sdk.config.continuous import ContinuousSpec
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.validation_spec import OperatingPointSettings, ValidationSpec
from ai4hi_sdk.jobs.spec import load_checked_job_spec as load_job_spec
from ai4hi_sdk.data.synth import synth_consortium
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.jobs.builder import lead_initial_state
from ai4hi_sdk.jobs.lineage import backbone_lineage
from ai4hi_sdk.jobs.run_record import TrainingRunRecord
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.jobs.validate import run_validation
from ai4hi_sdk.privacy.egress import model_sha256
from ai4hi_sdk.tasks.base import TaskStrategy
from ai4hi_sdk.tasks.registry import task_strategy
from ai4hi_sdk.validation.decision import Evidence
from ai4hi_sdk.validation.engine import (
    evidence_from_validation,
    load_or_create_signing_key,
    make_decision,
    swap_roles,
    with_drift,
)
from ai4hi_sdk.validation.update_policy import load_update_policy

REPORT_DIR = "report"
DECISION_LOG = "decisions.jsonl"
NOT_DEPLOYED = "none"
INITIAL = "m0-initial"
SIGNING_KEY = Path("keys") / "decision_signing_key.pem"


class ContinuousLoop:
    """State of one run of the loop (see the module docstring).

    Args:
        spec: the loop file.
        data_root: where the synthetic consortium's data versions are written (``v1/``, ``v2/``).
        workspace: jobs, site state, models and the report folder.
        say: progress printer.
    """

    def __init__(self, spec: ContinuousSpec, data_root: str | Path, workspace: str | Path,
                 say: Callable[[str], None] = print):
        self.spec = spec
        self.data_root = Path(data_root).resolve()
        self.ws = Path(workspace).resolve()
        self.say = say
        self.job: JobSpec = load_job_spec(spec.resolve(spec.job)).with_overrides(**spec.train.model_dump())
        #: what the loop's job validates and how (its task kind)
        self.task: TaskStrategy = task_strategy(self.job.task)
        self.policy = load_update_policy(spec.resolve(spec.policy))
        # the policy decides how a model version's operating point is chosen and what the sites report
        op = self.policy.operating_point
        self.validation_config: ValidationSpec = spec.validation.model_copy(update={
            "operating_point": OperatingPointSettings(target=op.target, value=op.value,
                                                      recalibration=self.policy.recalibration),
            "net_benefit_thresholds": self.policy.decision_curve.thresholds()})
        self.report = self.ws / REPORT_DIR
        self.history: dict[str, Any] = {
            "name": spec.name, "intended_use": spec.intended_use, "limitations": list(spec.limitations),
            "policy": self.policy.model_dump(mode="json"), "decision_log": DECISION_LOG, "models": {}, "steps": [],
            "deployed": NOT_DEPLOYED, "leave_one_site_out": []}
        self.champion: str | None = None
        #: the model in clinical use (None: none has passed every floor, or it was withdrawn)
        self.deployed: str | None = None
        self._deployments: list[str] = []  # models deployed so far, in order (for a rollback)
        self.last_evidence: Evidence | None = None
        self._last_candidate: str | None = None  # whose evidence the last validation's candidate role is
        self.lineage: dict[str, Any] | None = None
        self._counts: dict[str, int] = {}

    # ------------------------------------------------------------------ bookkeeping
    def _next(self, kind: str) -> int:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return self._counts[kind]

    def _save_history(self) -> None:
        (self.report / "history.json").write_text(json.dumps(self.history, indent=2, sort_keys=True))

    def _step(self, **step: Any) -> None:
        self.history["steps"].append(step)
        self._save_history()

    @property
    def champion_model(self) -> str:
        """The current champion's label (set by :meth:`setup`, which makes the initial model)."""
        if self.champion is None:
            raise RuntimeError("the loop has no champion yet: setup() makes the initial model first")
        return self.champion

    def _model_path(self, label: str) -> Path:
        return self.ws / "models" / f"{label}.pt"

    # ------------------------------------------------------------------ stages
    def setup(self) -> None:
        for stale in ("sites", "runs", REPORT_DIR, "models", "job", "simulate", "result"):
            shutil.rmtree(self.ws / stale, ignore_errors=True)
        self.report.mkdir(parents=True)
        (self.ws / "models").mkdir(parents=True)
        self.key = load_or_create_signing_key(self.ws / SIGNING_KEY)
        initial = lead_initial_state(self.job)
        torch.save(initial, self._model_path(INITIAL))
        self.history["models"][INITIAL] = {
            "sha256": model_sha256(initial),
            "training": {"job": "none: the untrained initial model (seeded), the first champion's baseline"}}
        self.lineage = backbone_lineage(self.job)  # a job adapting a backbone: backbone -> adapter -> deployed
        if self.lineage:
            self.history["models"][INITIAL]["lineage"] = dict(self.lineage)
        self.champion = INITIAL

    def install_site_policy(self, data_version: str) -> None:
        """Give every simulated site the loop's privacy policy (``site_policy``), if it names one."""
        if self.spec.site_policy is None:
            return
        from ai4hi_sdk.jobs.simulate import discover_sites, install_site_policies

        sites = discover_sites(self.data_root / data_version)
        install_site_policies(self.ws, sites, self.spec.resolve(self.spec.site_policy))
        self.say(f"site policy {self.spec.site_policy} installed at {', '.join(sites)}")

    def synth(self, version: str, seed: int, *, drift: dict[str, float] | None = None,
              manufacturers: dict[str, str] | None = None) -> Path:
        d = self.spec.data
        out = self.data_root / version
        synth_consortium(out, sites=d.sites, studies_per_site=d.studies_per_site, seed=seed, drift=drift,
                         manufacturers=manufacturers, overwrite=True)
        return out

    def _simulate_training(self, job: JobSpec, label: str, data_version: str, parent: str,
                           sites: list[str] | None = None) -> Any:
        """Run one training job warm-started from ``parent``; the model goes to ``models/<label>.pt``."""
        parent_sha = self.history["models"][parent]["sha256"]
        result = simulate(job, self.data_root / data_version, self.ws, timeout_s=self.spec.timeout_s,
                          initial_model=self._model_path(parent), sites=sites)
        if not result.ok:
            raise UserError(f"training {label} did not complete: {result.metrics.get('reason')} "
                            f"(log: {self.ws / 'simulate.log'})")
        initial = result.run_record.initial_model
        round0 = initial.sha256 if initial is not None else None
        if round0 != parent_sha:  # the server must have started from exactly the champion's weights
            raise UserError(f"training {label}: round-0 global model sha256 {round0} is not the champion "
                            f"{parent}'s {parent_sha}")
        shutil.copy2(result.result_dir / "global_model.pt", self._model_path(label))
        return result

    def train(self, data_version: str) -> str:
        """Train a new candidate on ``data_version``, warm-started from the champion."""
        label = f"c{self._next('train')}"
        parent = self.champion_model
        self.say(f"train {label} on data {data_version} ({self.job.train.rounds} rounds x "
                 f"{self.job.train.local_epochs} local epochs), warm-started from {parent} ...")
        result = self._simulate_training(self.job, label, data_version, parent)
        record = result.run_record
        initial = record.initial_model
        assert initial is not None  # checked against the champion by _simulate_training
        shutil.copy2(result.result_dir / "metrics.json", self.report / f"train-{label}.json")
        if (result.result_dir / "tensorboard").is_dir():  # what the server streamed during the job
            shutil.copytree(result.result_dir / "tensorboard", self.report / "tensorboard" / label, dirs_exist_ok=True)
        last_round = record.rounds[-1] if record.rounds else None
        last = last_round.sites if last_round is not None else {}
        state = torch.load(self._model_path(label), map_location="cpu", weights_only=True)
        self.history["models"][label] = {"sha256": model_sha256(state), "parent": parent, "training": {
            "job": f"{self.job.name}, warm-started from {parent}",
            "initial_model": {"model": parent, "sha256": initial.sha256, "source": initial.source},
            "rounds": len(record.rounds), "sites": record.sites,
            "local_epochs": self.job.train.local_epochs, "data_version": data_version,
            "data": {s: {"train_samples": m.get("train_samples")} for s, m in last.items()},
            # under secure aggregation only the total is known; per-site sizes never left the sites
            "total_train_samples": last_round.total_weight if last_round is not None else None,
            "secure_aggregation": last_round is not None and last_round.total_weight is not None,
            "privacy": _site_privacy(record, last),
            "record": f"train-{label}.json"}}
        if self.lineage:
            self.history["models"][label]["lineage"] = dict(self.lineage)
        self._step(kind="train", model=label, data_version=data_version, warm_start=parent,
                   seconds=round(result.seconds, 1), record=None)
        self.say(f"  {label}: done in {result.seconds:.0f} s")
        return label

    def validate(self, candidate: str, data_version: str) -> dict:
        """Choose the candidate's operating point on the validation splits (and the champion's if
        its version has none), then validate both at their operating points on the test splits."""
        i = self._next("validate")
        models = self.history["models"]
        champ = models[self.champion]
        self.say(f"validate {candidate} vs champion {self.champion} at every site (data {data_version}): operating "
                 "points on the validation splits, then the test splits ...")
        run = run_validation(self.job, self.validation_config, self.data_root / data_version,
                             self.ws / "runs" / f"validate-{i}", champion=self._model_path(self.champion_model),
                             candidate=self._model_path(candidate), sites_root=self.ws / "sites",
                             timeout_s=self.spec.timeout_s, champion_operating_point=champ.get("operating_point"),
                             champion_calibration=champ.get("calibration"))
        record = run.run_record
        if not run.ok:
            raise UserError(f"validation {i} did not complete: {record.reason}")
        name = f"validation-{i}.json"
        shutil.copy2(run.result_dir / "validation.json", self.report / name)
        for role, model in (("candidate", candidate), ("champion", self.champion_model)):
            entry = (record.operating_points or {}).get(role)
            if "operating_point" not in models[model] and entry is not None and entry.operating_point:
                # the model version keeps the operating point chosen the first time it was validated
                models[model]["operating_point"] = entry.operating_point
                models[model]["calibration"] = entry.calibration
                if entry.calibration_error:
                    models[model]["calibration_error"] = entry.calibration_error
                models[model]["operating_point_record"] = name
                self.say("  " + _operating_point_line(model, entry.operating_point, entry.calibration))
        self._step(kind="validate", candidate=candidate, champion=self.champion, data_version=data_version,
                   task=self.job.task, record=name, seconds=round(run.seconds, 1))
        for site, rep in sorted((record.validation or {}).items()):
            self.say(f"  {site}: {self.task.site_line(rep)}")
        return run.record

    # ------------------------------------------------------------------ leave-one-site-out
    def _training_payloads(self, sites: list[str]) -> dict[str, int]:
        """Training-task results (updates and protocol messages) each site's egress log holds so far."""
        from ai4hi_sdk.audit.hash_chain import read_entries
        from ai4hi_sdk.jobs.wire import TRAINING_TASKS
        from ai4hi_sdk.site.egress_guard import EGRESS_LOG

        out = {}
        for site in sites:
            log = self.ws / "sites" / site / EGRESS_LOG
            out[site] = sum(1 for e in read_entries(log) if e["record"].get("task") in TRAINING_TASKS) \
                if log.exists() else 0
        return out

    def leave_one_site_out(self, model: str, data_version: str) -> dict[str, dict[str, float]]:
        """Train ``model``'s recipe once per site on every other site (same initial model, data and
        settings) and validate each at the site it never saw, against ``model`` (trained with every
        site) on that site's test split. Only aggregates leave; records what each site's egress log
        shows of the training (the held-out site: no training payload at all)."""
        info = self.history["models"][model]
        sites = list(info["training"].get("sites") or [])
        if info.get("parent") != INITIAL:
            self.say(f"leave-one-site-out skipped: {model} was warm-started from {info.get('parent')}, whose "
                     "training saw every site")
            return {}
        if len(sites) < 3:
            self.say(f"leave-one-site-out needs at least 3 sites; {model} was trained at {len(sites)}")
            return {}
        job = self.job
        note = None
        if job.privacy.secure_aggregation is not None:
            from ai4hi_sdk.privacy.secagg.settings import protocol_config

            try:
                protocol_config(job.privacy.secure_aggregation).validate_for(len(sites) - 1)
            except ValueError as err:  # e.g. 2 sites: secure aggregation needs at least 3
                job = job.model_copy(update={"privacy": job.privacy.model_copy(update={"secure_aggregation": None})})
                note = (f"trained without secure aggregation ({len(sites) - 1} sites: {err}); DP-SGD on, each site's "
                        "update seen by the server")
        self.say(f"leave-one-site-out for {model}: {len(sites)} models, each trained on all sites but one"
                 + (f" ({note})" if note else "") + " ...")
        runs: dict[str, dict] = {}
        candidates: dict[str, Path] = {}
        for held in sites:
            others = [s for s in sites if s != held]
            label = f"{model}-without-{held}"
            before = self._training_payloads(sites)
            try:
                result = self._simulate_training(job, label, data_version, INITIAL, sites=others)
            except UserError as err:  # e.g. a site's privacy budget refused: said, not hidden
                runs[held] = {"model": label, "error": str(err)}
                self.say(f"  without {held}: not trained: {err}")
                continue
            after = self._training_payloads(sites)
            state = torch.load(self._model_path(label), map_location="cpu", weights_only=True)
            trained = result.run_record
            runs[held] = {"model": label, "sha256": model_sha256(state), "held_out": held,
                          "trained_at": trained.sites, "initial_model": INITIAL,
                          "secure_aggregation": job.privacy.secure_aggregation is not None,
                          "training_payloads": {s: after[s] - before[s] for s in sites},
                          "privacy": _site_privacy(trained, trained.rounds[-1].sites if trained.rounds else {}),
                          "seconds": round(result.seconds, 1)}
            if note:
                runs[held]["note"] = note
            candidates[held] = self._model_path(label)
            self.say(f"  without {held}: trained at {', '.join(runs[held]['trained_at'])} in {result.seconds:.0f} s")
        scores: dict[str, dict[str, float]] = {}
        record_name = None
        if candidates:
            i = self._next("loso")
            run = run_validation(self.job, self.validation_config.model_copy(update={
                "operating_point": None, "robustness": False, "explanation_images": 0, "net_benefit_thresholds": None}),
                self.data_root / data_version, self.ws / "runs" / f"leave-one-site-out-{i}",
                champion=self._model_path(model), site_candidates=candidates, sites_root=self.ws / "sites",
                timeout_s=self.spec.timeout_s)
            record_name = f"leave-one-site-out-{i}.json"
            shutil.copy2(run.result_dir / "validation.json", self.report / record_name)
            validated = run.run_record
            if not run.ok:
                self.say(f"  leave-one-site-out validation did not complete: {validated.reason}")
            metric = self.task.validated_metric()
            for held, rep in sorted((validated.validation or {}).items()):
                cand, champ, paired = rep.get("candidate", {}), rep.get("champion", {}), rep.get("paired", {})
                if metric.name not in cand or metric.name not in champ:
                    runs[held]["error"] = f"at the held-out site: {self.task.undefined_note}"
                    continue
                scores[held] = {"score": cand[metric.name], "full_score": champ[metric.name]}
                runs[held].update(n=cand.get("n"), delta=paired.get("delta"), delta_ci=paired.get("ci"))
                self.say(f"  {held} (never seen): {metric.label} {cand[metric.name]:.3f} vs {champ[metric.name]:.3f} "
                         f"for {model} (trained with it), change {paired.get('delta', float('nan')):+.3f}")
            for site, reason in [(r.site, r.reason) for r in validated.refused] + \
                    [(r.site, r.reason) for r in validated.rejected]:
                runs.setdefault(site, {})["error"] = f"validation: {reason}"
        info["leave_one_site_out"] = scores
        info["leave_one_site_out_runs"] = runs
        self.history["leave_one_site_out"].append({"model": model, "data_version": data_version,
                                                   "record": record_name, "runs": runs})
        self._step(kind="leave_one_site_out", model=model, data_version=data_version, record=record_name,
                   sites=sorted(runs))
        return scores

    def monitor(self, data_version: str) -> dict:
        i = self._next("monitor")
        watched = (f"deployed model {self.deployed}" if self.deployed is not None
                   else f"nothing deployed; the champion {self.champion_model}")
        self.say(f"monitor drift of data {data_version} at every site ({watched}) ...")
        run = run_validation(self.job, self.spec.validation, self.data_root / data_version,
                             self.ws / "runs" / f"monitor-{i}", champion=self._model_path(self.champion_model),
                             tasks=("monitor",), sites_root=self.ws / "sites", timeout_s=self.spec.timeout_s)
        record = run.run_record
        if not run.ok:
            raise UserError(f"monitoring {i} did not complete: {record.reason}")
        name = f"monitor-{i}.json"
        shutil.copy2(run.result_dir / "validation.json", self.report / name)
        self._step(kind="monitor", model=self.champion, data_version=data_version, record=name,
                   label=f"monitor {i} ({data_version})", seconds=round(run.seconds, 1))
        for site, rep in sorted((record.drift or {}).items()):
            self.say(f"  {site}: {'ALARM' if rep['alarm'] else 'no alarm'}"
                     + (f" ({', '.join(sorted(rep.get('triggered', {})))})" if rep["alarm"] else ""))
        return run.record

    def decide(self, stage: str, candidate: str, validation: dict | None = None, drift: dict | None = None) -> str:
        models = self.history["models"]
        # the deployed-model floors are checked on new labelled evidence, and only for a model in use
        champion_deployed = validation is not None and self.deployed is not None and self.deployed == self.champion
        if validation is not None:
            evidence, notes = evidence_from_validation(
                validation, drift, task=self.job.task, candidate_operating_point=models[candidate].get("operating_point"),
                champion_operating_point=models[self.champion].get("operating_point"))
            self.last_evidence, self._last_candidate = evidence, candidate
        else:
            if self.last_evidence is None:
                raise UserError("a decision needs validation evidence first")
            # monitoring has no new labels: the champion's last validation evidence, plus drift; if
            # the champion was the other model of that validation, the evidence is seen from its side
            last = self.last_evidence if candidate == self._last_candidate else swap_roles(self.last_evidence)
            evidence = with_drift(last, drift or {})
            notes = [f"no new validation: the champion {candidate}'s last validation evidence with this "
                     "monitoring's drift results"]
        eps = [p.get("epsilon") for p in models.get(candidate, {}).get("training", {}).get("privacy", {}).values()
               if p.get("epsilon") is not None]
        data_stats = {s: {"test_n": rep["candidate"].get("n"), "test_positives": rep["candidate"].get("positives"),
                          "candidate_threshold": (rep.get("meta") or {}).get("threshold"),
                          "champion_threshold": (rep.get("meta") or {}).get("champion_threshold")}
                      for s, rep in ((validation or {}).get("validation") or {}).items()}
        thresholds = {role: _threshold_record(models.get(m, {})) for role, m in
                      (("candidate", candidate), ("champion", self.champion))}
        decision, entry = make_decision(
            evidence, self.policy, self.report / DECISION_LOG, self.key,
            parent_model_sha256=models[self.champion]["sha256"], model_sha256=models[candidate]["sha256"],
            job_id=f"{self.job.name}/{candidate}", data_stats=data_stats, epsilon_spent=max(eps) if eps else None,
            notes=notes, champion_deployed=champion_deployed,
            extra={"stage": stage, "candidate": candidate, "champion": self.champion,
                   "deployed_before": self.deployed or NOT_DEPLOYED,
                   # the operating point each model was judged at (its model version's threshold)
                   "operating_points": thresholds,
                   # the model the candidate's training started from (warm start)
                   "candidate_warm_started_from": models.get(candidate, {}).get("parent"),
                   # a backbone's adaptation: backbone sha256 -> adapter (model_sha256) -> deployed
                   **({"backbone_lineage": models[candidate]["lineage"]}
                      if models.get(candidate, {}).get("lineage") else {}),
                   "drift_alarms": {s: bool(r.get("alarm")) for s, r in (drift or {}).items()}})
        action = self._apply(decision, candidate)
        self._step(kind="decision", stage=stage, candidate=candidate, decision=decision.decision,
                   reasons=decision.reasons, rules=[r.model_dump() for r in decision.rules], pooled=decision.pooled,
                   sites_used=decision.sites_used, log_seq=entry["seq"], deployed_after=self.deployed or NOT_DEPLOYED,
                   champion_after=self.champion, action=action, record=None)
        self.say(f"decision ({stage}): {decision.decision.upper()} -> deployed model: {self.deployed or NOT_DEPLOYED}"
                 f" (champion {self.champion}){'; ' + action if action else ''}")
        for reason in decision.reasons:
            self.say(f"  - {reason}")
        if decision.decision == "retrain" and candidate:  # why the candidate was not deployed (keep lists it)
            for rule in decision.rules:
                if rule.rule.startswith("replace_if.") and not rule.passed:
                    self.say(f"  - not replaced: {rule.rule} failed: {rule.detail}")
        return decision.decision

    def _apply(self, decision: Any, candidate: str) -> str:
        """Deploy, withdraw or roll back as the decision says; returns what was done (or "")."""
        below = [r.rule for r in decision.rules if r.rule.startswith("deployed_safety_floor.") and not r.passed]
        if decision.decision == "replace" and candidate != self.champion:
            self.champion = self.deployed = candidate
            self._deployments.append(candidate)
            return f"{candidate} deployed at its operating point"
        if decision.decision == "rollback":
            withdrawn = self.deployed
            earlier = [m for m in self._deployments if m != withdrawn]
            self.deployed = earlier[-1] if earlier else None
            if self.deployed is not None:
                self.champion = self.deployed
            return (f"{withdrawn} withdrawn ({', '.join(below)}); rolled back to "
                    f"{self.deployed or 'no model (none was deployed before it)'}")
        if below and self.deployed is not None:  # on_deployed_below_floor: retrain
            withdrawn, self.deployed = self.deployed, None
            return f"{withdrawn} withdrawn from use ({', '.join(below)}) until a retrained model passes every floor"
        return ""

    def summary(self) -> list[str]:
        """What is deployed and how it does at its operating point on its latest validation."""
        if self.deployed is None:
            return [f"deployed model: {NOT_DEPLOYED} (no model has passed every safety floor at its operating "
                    f"point; champion for comparison: {self.champion})"]
        info = self.history["models"][self.deployed]
        lines = ["deployed model: " + _operating_point_line(self.deployed, info.get("operating_point"),
                                                            info.get("calibration"))]
        for step in reversed(self.history["steps"]):
            if step.get("kind") != "decision" or step.get("candidate") != self.deployed:
                continue
            for rule in step.get("rules") or []:
                if rule["rule"] in ("safety_floor.sensitivity", "safety_floor.specificity"):
                    name = rule["rule"].split(".")[1]
                    values = rule.get("values") or {}
                    parts = [f"{site} {_num(v.get('value'))} (lower {_num(v.get('lower_bound'))})"
                             for site, v in sorted(values.items()) if site != "pooled" and "value" in v]
                    pooled = values.get("pooled") or {}
                    lines.append(f"  {name} at its operating point (test splits, decision log entry "
                                 f"{step.get('log_seq')}): pooled {_num(pooled.get('value'))} (lower "
                                 f"{_num(pooled.get('lower_bound'))}); " + ", ".join(parts))
            break
        return lines

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        from ai4hi_sdk.reports.report import generate_reports

        started = time.monotonic()
        self.setup()
        d, drift = self.spec.data, self.spec.drift
        self.say(f"synthesising data v1: {d.sites} sites x {d.studies_per_site} studies ...")
        self.synth("v1", d.seed)
        self.install_site_policy("v1")
        c1 = self.train("v1")
        self.decide("after training", c1, self.validate(c1, "v1"))
        if self.spec.leave_one_site_out:
            self.leave_one_site_out(c1, "v1")
        description = (f"new data v2 at every site (seed {drift.seed}); at {drift.site}: intensity shift "
                       f"{drift.intensity_shift:+.2f}" + (f", scanner vendor {drift.manufacturer}" if drift.manufacturer else ""))
        self.say(description)
        self.synth("v2", drift.seed, drift={drift.site: drift.intensity_shift},
                   manufacturers={drift.site: drift.manufacturer} if drift.manufacturer else None)
        self._step(kind="inject_drift", description=description, record=None)
        monitored = self.monitor("v2")
        outcome = self.decide("after monitoring", self.champion_model, drift=monitored.get("drift"))
        if outcome in ("retrain", "rollback"):
            c2 = self.train("v2")
            self.decide("after retraining", c2, self.validate(c2, "v2"))
        else:
            self.say("no retraining recommended: the loop ends here")
        self.history["deployed"] = self.deployed or NOT_DEPLOYED
        self.history["champion"] = self.champion
        self.history["seconds"] = round(time.monotonic() - started, 1)
        self._save_history()
        out = generate_reports(self.report)
        out["seconds"] = self.history["seconds"]
        out["deployed"] = self.deployed or NOT_DEPLOYED
        out["champion"] = self.champion
        out["summary"] = self.summary()
        return out


def run_continuous(spec: ContinuousSpec, data_root: str | Path, workspace: str | Path,
                   say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the loop; returns the report paths, the deployed model and the seconds it took."""
    return ContinuousLoop(spec, data_root, workspace, say).run()


def _num(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{float(x):.{digits}f}"


def _threshold_record(info: dict) -> dict[str, Any] | None:
    """The part of a model version's operating point a decision log entry names."""
    op = info.get("operating_point")
    if not op:
        return None
    cal = info.get("calibration") or {}
    return {"threshold": op.get("threshold"), "target": op.get("target"), "value": op.get("value"),
            "split": op.get("split"), "sites": op.get("sites"), "exact_counts": op.get("exact_counts"),
            "k": op.get("k"), "recalibration": cal.get("method"), "a": cal.get("a"), "b": cal.get("b")}


def _operating_point_line(model: str, op: dict | None, cal: dict | None) -> str:
    if not op:
        return f"{model}: no operating point recorded"
    target = f"{op.get('target')} >= {op['value']}" if op.get("value") is not None else str(op.get("target"))
    counts = "exact" if op.get("exact_counts") else f"k-merged (k={op.get('k')})"
    line = (f"{model}: threshold {op['threshold']:.4f} for {target} on the validation splits of "
            f"{', '.join(op.get('sites', []))} ({counts} histograms: sensitivity {_num(op.get('sensitivity'))}, "
            f"specificity {_num(op.get('specificity'))} there)")
    if cal:
        line += (f"; {cal.get('method')} recalibration, pooled validation ECE {_num(cal['before']['ece'])} -> "
                 f"{_num(cal['after']['ece'])}")
    return line


def _site_privacy(record: TrainingRunRecord, last_sites: dict) -> dict[str, dict]:
    """Epsilon (and delta) per site: what the site reported with its update, else (secure
    aggregation hides per-site metrics) the site's own ledger summary the simulator collected."""
    out = {s: {"epsilon": m.get("dp_epsilon"), "delta": m.get("dp_delta")} for s, m in last_sites.items()
           if m.get("dp_epsilon") is not None}
    for site, summary in (record.privacy or {}).items():
        spent = [d.epsilon_spent for d in summary.datasets.values() if d.epsilon_spent is not None]
        if site not in out and spent:
            out[site] = {"epsilon": max(spent), "delta": next(iter(summary.datasets.values())).delta}
    return out

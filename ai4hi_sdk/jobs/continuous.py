"""The continuous validation and training loop on a synthetic consortium (``ai4hi continuous run``).

    synth data v1 -> train C1 -> validate C1 vs champion everywhere -> decide
      -> new data v2 at every site, drifted at one (intensity shift / scanner vendor)
      -> monitor the champion at every site -> decide (a drift alarm recommends retraining)
      -> retrain C2 on v2 -> validate C2 vs champion -> decide -> report

Every job is a real NVFlare simulation. All jobs share the sites' state (``WS/sites/<site>/ai4hi``:
privacy policy, budget and ledger, egress log, drift references), as a real site keeps it. The
first champion is the untrained initial model (a chance-level baseline). Every training job is
warm-started from the champion deployed at that moment (its weights are the round-0 global model;
the job's record must show the champion's sha256, else the loop stops). Each decision is
appended, signed, to ``WS/report/decisions.jsonl``; the report folder ``WS/report`` gets
``history.json``, the job records, ``report.html`` and the model cards.
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
from ai4hi_sdk.jobs.spec import load_checked_job_spec as load_job_spec
from ai4hi_sdk.data.synth import synth_consortium
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.jobs.lineage import backbone_lineage
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.jobs.validate import run_validation
from ai4hi_sdk.privacy.egress import model_sha256
from ai4hi_sdk.trainers.loading import trainer_class_for
from ai4hi_sdk.validation.decision import Evidence
from ai4hi_sdk.validation.engine import (
    evidence_from_validation,
    load_or_create_signing_key,
    make_decision,
    with_drift,
)
from ai4hi_sdk.validation.update_policy import load_update_policy

REPORT_DIR = "report"
DECISION_LOG = "decisions.jsonl"
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
        self.policy = load_update_policy(spec.resolve(spec.policy))
        self.report = self.ws / REPORT_DIR
        self.history: dict[str, Any] = {
            "name": spec.name, "intended_use": spec.intended_use, "limitations": list(spec.limitations),
            "policy": self.policy.model_dump(mode="json"), "decision_log": DECISION_LOG, "models": {}, "steps": []}
        self.champion: str | None = None
        self.last_evidence: Evidence | None = None
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

    def _model_path(self, label: str) -> Path:
        return self.ws / "models" / f"{label}.pt"

    # ------------------------------------------------------------------ stages
    def setup(self) -> None:
        for stale in ("sites", "runs", REPORT_DIR, "models", "job", "simulate", "result"):
            shutil.rmtree(self.ws / stale, ignore_errors=True)
        self.report.mkdir(parents=True)
        (self.ws / "models").mkdir(parents=True)
        self.key = load_or_create_signing_key(self.ws / SIGNING_KEY)
        initial = trainer_class_for(self.job)(self.job, site_dir=None, site_name="server", device="cpu").initial_state()
        torch.save(initial, self._model_path("m0-initial"))
        self.history["models"]["m0-initial"] = {
            "sha256": model_sha256(initial),
            "training": {"job": "none: the untrained initial model (seeded), the first champion's baseline"}}
        self.lineage = backbone_lineage(self.job)  # a job adapting a backbone: backbone -> adapter -> deployed
        if self.lineage:
            self.history["models"]["m0-initial"]["lineage"] = dict(self.lineage)
        self.champion = "m0-initial"

    def synth(self, version: str, seed: int, *, drift: dict[str, float] | None = None,
              manufacturers: dict[str, str] | None = None) -> Path:
        d = self.spec.data
        out = self.data_root / version
        synth_consortium(out, sites=d.sites, studies_per_site=d.studies_per_site, seed=seed, drift=drift,
                         manufacturers=manufacturers, overwrite=True)
        return out

    def train(self, data_version: str) -> str:
        """Train a new candidate on ``data_version``, warm-started from the deployed champion."""
        label = f"c{self._next('train')}"
        parent = self.champion
        parent_sha = self.history["models"][parent]["sha256"]
        self.say(f"train {label} on data {data_version} ({self.job.train.rounds} rounds x "
                 f"{self.job.train.local_epochs} local epochs), warm-started from {parent} ...")
        result = simulate(self.job, self.data_root / data_version, self.ws, timeout_s=self.spec.timeout_s,
                          initial_model=self._model_path(parent))
        if not result.ok:
            raise UserError(f"training {label} did not complete: {result.metrics.get('reason')} "
                            f"(log: {self.ws / 'simulate.log'})")
        round0 = (result.metrics.get("initial_model") or {}).get("sha256")
        if round0 != parent_sha:  # the server must have started from exactly the champion's weights
            raise UserError(f"training {label}: round-0 global model sha256 {round0} is not the champion "
                            f"{parent}'s {parent_sha}")
        shutil.copy2(result.result_dir / "global_model.pt", self._model_path(label))
        shutil.copy2(result.result_dir / "metrics.json", self.report / f"train-{label}.json")
        metrics = result.metrics
        last_round = metrics["rounds"][-1] if metrics.get("rounds") else {}
        last = last_round.get("sites", {})
        state = torch.load(self._model_path(label), map_location="cpu", weights_only=True)
        self.history["models"][label] = {"sha256": model_sha256(state), "parent": parent, "training": {
            "job": f"{self.job.name}, warm-started from {parent}",
            "initial_model": {"model": parent, "sha256": round0, "source": result.metrics["initial_model"]["source"]},
            "rounds": len(metrics.get("rounds", [])), "sites": metrics.get("sites", []),
            "local_epochs": self.job.train.local_epochs, "data_version": data_version,
            "data": {s: {"train_samples": m.get("train_samples")} for s, m in last.items()},
            # under secure aggregation only the total is known; per-site sizes never left the sites
            "total_train_samples": last_round.get("total_weight"),
            "secure_aggregation": "total_weight" in last_round,
            "privacy": _site_privacy(metrics, last),
            "record": f"train-{label}.json"}}
        if self.lineage:
            self.history["models"][label]["lineage"] = dict(self.lineage)
        self._step(kind="train", model=label, data_version=data_version, warm_start=parent,
                   seconds=round(result.seconds, 1), record=None)
        self.say(f"  {label}: done in {result.seconds:.0f} s")
        return label

    def validate(self, candidate: str, data_version: str) -> dict:
        i = self._next("validate")
        self.say(f"validate {candidate} vs champion {self.champion} at every site (data {data_version}) ...")
        run = run_validation(self.job, self.spec.validation, self.data_root / data_version,
                             self.ws / "runs" / f"validate-{i}", champion=self._model_path(self.champion),
                             candidate=self._model_path(candidate), sites_root=self.ws / "sites",
                             timeout_s=self.spec.timeout_s)
        if not run.ok:
            raise UserError(f"validation {i} did not complete: {run.record.get('reason')}")
        name = f"validation-{i}.json"
        shutil.copy2(run.result_dir / "validation.json", self.report / name)
        self._step(kind="validate", candidate=candidate, champion=self.champion, data_version=data_version,
                   record=name, seconds=round(run.seconds, 1))
        for site, rep in sorted(run.record.get("validation", {}).items()):
            c, p = rep["candidate"], rep.get("paired", {})
            self.say(f"  {site}: n={c.get('n')} AUROC {c.get('auroc', float('nan')):.3f} "
                     f"(champion {rep['champion'].get('auroc', float('nan')):.3f}, change "
                     f"{p.get('delta', float('nan')):+.3f} [{(p.get('ci') or [float('nan')] * 2)[0]:+.3f}, "
                     f"{(p.get('ci') or [float('nan')] * 2)[1]:+.3f}])")
        return run.record

    def monitor(self, data_version: str) -> dict:
        i = self._next("monitor")
        self.say(f"monitor drift of data {data_version} at every site (deployed model {self.champion}) ...")
        run = run_validation(self.job, self.spec.validation, self.data_root / data_version,
                             self.ws / "runs" / f"monitor-{i}", champion=self._model_path(self.champion),
                             tasks=("monitor",), sites_root=self.ws / "sites", timeout_s=self.spec.timeout_s)
        if not run.ok:
            raise UserError(f"monitoring {i} did not complete: {run.record.get('reason')}")
        name = f"monitor-{i}.json"
        shutil.copy2(run.result_dir / "validation.json", self.report / name)
        self._step(kind="monitor", model=self.champion, data_version=data_version, record=name,
                   label=f"monitor {i} ({data_version})", seconds=round(run.seconds, 1))
        for site, rep in sorted((run.record.get("drift") or {}).items()):
            self.say(f"  {site}: {'ALARM' if rep['alarm'] else 'no alarm'}"
                     + (f" ({', '.join(sorted(rep.get('triggered', {})))})" if rep["alarm"] else ""))
        return run.record

    def decide(self, stage: str, candidate: str, validation: dict | None = None, drift: dict | None = None) -> str:
        if validation is not None:
            evidence, notes = evidence_from_validation(validation, drift)
            self.last_evidence = evidence
        else:
            if self.last_evidence is None:
                raise UserError("a decision needs validation evidence first")
            # monitoring has no new labels: the deployed model's last validation evidence, plus drift
            evidence = with_drift(self.last_evidence, drift or {})
            notes = [f"no new validation: the deployed model {candidate}'s last validation evidence with this "
                     "monitoring's drift results"]
        models = self.history["models"]
        eps = [p.get("epsilon") for p in models.get(candidate, {}).get("training", {}).get("privacy", {}).values()
               if p.get("epsilon") is not None]
        data_stats = {s: {"test_n": rep["candidate"].get("n"), "test_positives": rep["candidate"].get("positives")}
                      for s, rep in ((validation or {}).get("validation") or {}).items()}
        decision, entry = make_decision(
            evidence, self.policy, self.report / DECISION_LOG, self.key,
            parent_model_sha256=models[self.champion]["sha256"], model_sha256=models[candidate]["sha256"],
            job_id=f"{self.job.name}/{candidate}", data_stats=data_stats, epsilon_spent=max(eps) if eps else None,
            notes=notes, extra={"stage": stage, "candidate": candidate, "champion": self.champion,
                                # the model the candidate's training started from (warm start)
                                "candidate_warm_started_from": models.get(candidate, {}).get("parent"),
                                # a backbone's adaptation: backbone sha256 -> adapter (model_sha256) -> deployed
                                **({"backbone_lineage": models[candidate]["lineage"]}
                                   if models.get(candidate, {}).get("lineage") else {}),
                                "drift_alarms": {s: bool(r.get("alarm")) for s, r in (drift or {}).items()}})
        if decision.decision == "replace" and candidate != self.champion:
            self.champion = candidate
        self._step(kind="decision", stage=stage, candidate=candidate, decision=decision.decision,
                   reasons=decision.reasons, rules=[r.model_dump() for r in decision.rules], pooled=decision.pooled,
                   sites_used=decision.sites_used, log_seq=entry["seq"], deployed_after=self.champion, record=None)
        self.say(f"decision ({stage}): {decision.decision.upper()} -> deployed model: {self.champion}")
        for reason in decision.reasons:
            self.say(f"  - {reason}")
        if decision.decision == "retrain" and candidate:  # why the candidate was not deployed (keep lists it)
            for rule in decision.rules:
                if rule.rule.startswith("replace_if.") and not rule.passed:
                    self.say(f"  - not replaced: {rule.rule} failed: {rule.detail}")
        return decision.decision

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        from ai4hi_sdk.reports.report import generate_reports

        started = time.monotonic()
        self.setup()
        d, drift = self.spec.data, self.spec.drift
        self.say(f"synthesising data v1: {d.sites} sites x {d.studies_per_site} studies ...")
        self.synth("v1", d.seed)
        c1 = self.train("v1")
        self.decide("after training", c1, self.validate(c1, "v1"))
        description = (f"new data v2 at every site (seed {drift.seed}); at {drift.site}: intensity shift "
                       f"{drift.intensity_shift:+.2f}" + (f", scanner vendor {drift.manufacturer}" if drift.manufacturer else ""))
        self.say(description)
        self.synth("v2", drift.seed, drift={drift.site: drift.intensity_shift},
                   manufacturers={drift.site: drift.manufacturer} if drift.manufacturer else None)
        self._step(kind="inject_drift", description=description, record=None)
        monitored = self.monitor("v2")
        outcome = self.decide("after monitoring", self.champion, drift=monitored.get("drift"))
        if outcome == "retrain":
            c2 = self.train("v2")
            self.decide("after retraining", c2, self.validate(c2, "v2"))
        else:
            self.say("no retraining recommended: the loop ends here")
        out = generate_reports(self.report)
        out["seconds"] = round(time.monotonic() - started, 1)
        out["deployed"] = self.champion
        self.history["seconds"] = out["seconds"]
        self._save_history()
        return out


def run_continuous(spec: ContinuousSpec, data_root: str | Path, workspace: str | Path,
                   say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the loop; returns the report paths, the deployed model and the seconds it took."""
    return ContinuousLoop(spec, data_root, workspace, say).run()


def _site_privacy(metrics: dict, last_sites: dict) -> dict[str, dict]:
    """Epsilon (and delta) per site: what the site reported with its update, else (secure
    aggregation hides per-site metrics) the site's own ledger summary the simulator collected."""
    out = {s: {"epsilon": m.get("dp_epsilon"), "delta": m.get("dp_delta")} for s, m in last_sites.items()
           if m.get("dp_epsilon") is not None}
    for site, summary in (metrics.get("privacy") or {}).items():
        if site not in out:
            spent = list((summary.get("datasets") or {}).values())
            if spent:
                out[site] = {"epsilon": max(d["epsilon_spent"] for d in spent), "delta": spent[0].get("delta")}
    return out

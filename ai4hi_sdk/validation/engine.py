"""Update decisions from what sites sent: evidence, policy, signed record (pure core + files).

* :func:`evidence_from_validation` turns a validation job's record (per-site aggregate reports, as
  the server received them, each read by its task kind's strategy) and, optionally, a monitoring
  job's drift statistics into the decision engine's :class:`~ai4hi_sdk.validation.decision.Evidence`;
* :func:`make_decision` applies the update policy (per-site rules and the random-effects pooled
  delta, :func:`~ai4hi_sdk.validation.decision.decide`) and appends the signed record — decision,
  evidence, lineage — to the hash-chained decision log;
* :func:`load_or_create_signing_key` keeps the lead's Ed25519 key (``0600``) and its public key
  beside it as ``<key>.pub`` (hex), outside the log's folder: that file (or a copy the lead
  publishes to the consortium) is what ``ai4hi audit verify --public-key`` is given. Nothing is
  written beside the log: a key kept there is not a trust anchor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ai4hi_sdk.tasks.registry import strategy_for_report, task_strategy
from ai4hi_sdk.validation.decision import Decision, Evidence, SiteEvidence, decide
from ai4hi_sdk.validation.decision_log import DecisionLog, public_key_hex
from ai4hi_sdk.validation.update_policy import UpdatePolicy


def evidence_from_validation(record: dict, drift: dict[str, dict] | None = None, *, task: str | None = None,
                             gap_metric: str | None = None, candidate_operating_point: dict | None = None,
                             champion_operating_point: dict | None = None) -> tuple[Evidence, list[str]]:
    """Evidence for :func:`decide` from a validation record (``record["validation"][site]``) and
    per-site drift reports (``{site: {"alarm": bool, ...}}``).

    Each site's report becomes evidence through its task kind's strategy
    (:meth:`~ai4hi_sdk.tasks.base.TaskStrategy.site_evidence`): ``task`` names it (the job spec's),
    or, without it, each report's own kind (:func:`~ai4hi_sdk.tasks.registry.strategy_for_report`).
    ``gap_metric``: the subgroup metric whose largest gap is compared (default: the kind's score).
    For classification each site's confusion counts, ECE and threshold come from its report (the
    threshold the site used); ``*_operating_point`` (the model versions' records, e.g. from
    :func:`~ai4hi_sdk.validation.operating_point.operating_point_from_payloads`) go into the signed
    evidence as they are.

    Returns ``(evidence, notes)``; a site whose paired change is undefined (e.g. one class in its
    test split) or that refused is left out and named in ``notes``.
    """
    drift = drift or {}
    sites, notes = [], []
    for refusal in record.get("refused", []):
        notes.append(f"site {refusal['site']} refused {refusal.get('task', 'the task')}: {refusal['reason']}")
    for rejected in record.get("rejected", []):
        notes.append(f"result of site {rejected['site']} rejected: {rejected['reason']}")
    for site, rep in sorted((record.get("validation") or {}).items()):
        strategy = task_strategy(task) if task is not None else strategy_for_report(rep)
        evidence = strategy.site_evidence(site, rep, notes=notes, gap_metric=gap_metric,
                                          drift_alarm=bool((drift.get(site) or {}).get("alarm", False)))
        if evidence is not None:
            sites.append(evidence)
    for site in sorted(set(drift) - {s.site for s in sites}):
        if drift[site].get("alarm"):
            notes.append(f"drift alarm at {site}, which has no validation evidence in this decision")
    return Evidence(sites=sites, candidate_operating_point=candidate_operating_point,
                    champion_operating_point=champion_operating_point), notes


def swap_roles(evidence: Evidence) -> Evidence:
    """The same evidence seen from the other model: candidate and champion exchanged (scores,
    thresholds, counts, ECE, gaps, operating points), the paired change and its interval negated."""
    def swap(s: SiteEvidence) -> SiteEvidence:
        data = s.model_dump()
        for field in ("score", "subgroup_gap", "threshold", "counts", "ece", "sensitivity_gap"):
            data[f"candidate_{field}"], data[f"champion_{field}"] = data[f"champion_{field}"], data[f"candidate_{field}"]
        lo, hi = s.score_delta_ci
        data.update(score_delta=-s.score_delta, score_delta_ci=(-hi, -lo))
        return SiteEvidence.model_validate(data)

    return evidence.model_copy(update={"sites": [swap(s) for s in evidence.sites],
                                       "candidate_operating_point": evidence.champion_operating_point,
                                       "champion_operating_point": evidence.candidate_operating_point})


def with_drift(evidence: Evidence, drift: dict[str, dict]) -> Evidence:
    """The same evidence with each site's drift alarm set from a monitoring job's reports."""
    return evidence.model_copy(update={"sites": [
        s.model_copy(update={"drift_alarm": bool((drift.get(s.site) or {}).get("alarm", False))})
        for s in evidence.sites]})


def public_key_file(key_path: str | Path) -> Path:
    """Where the signer's public key (hex) is kept: beside the private key, ``<key>.pub``."""
    return Path(key_path).with_suffix(".pub")


def load_or_create_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """The decision signer's Ed25519 key (PKCS#8 PEM, created with mode 0600 if absent); its public
    key is (re)written to :func:`public_key_file` for verifiers."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
    else:
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    public_key_file(path).write_text(public_key_hex(key) + "\n")
    return key


def make_decision(evidence: Evidence, policy: UpdatePolicy, log_path: str | Path, key: Ed25519PrivateKey, *,
                  parent_model_sha256: str | None, model_sha256: str | None, job_id: str | None,
                  data_stats: dict[str, Any] | None = None, epsilon_spent: float | None = None,
                  notes: list[str] | None = None, extra: dict[str, Any] | None = None,
                  champion_deployed: bool = True) -> tuple[Decision, dict]:
    """Decide and append the signed record to ``log_path``; returns ``(decision, chain entry)``
    (the entry's ``seq`` and ``hash`` are the log's new anchor). ``champion_deployed``: see
    :func:`~ai4hi_sdk.validation.decision.decide`."""
    decision = decide(evidence, policy, champion_deployed=champion_deployed)
    if notes:
        decision = decision.model_copy(update={"reasons": decision.reasons + notes})
    log_path = Path(log_path)
    entry = DecisionLog(log_path, key).append(
        decision, evidence, parent_model_sha256=parent_model_sha256, model_sha256=model_sha256, job_id=job_id,
        data_stats=data_stats, epsilon_spent=epsilon_spent,
        extra={"policy": policy.model_dump(mode="json"), **(extra or {})})
    return decision, entry

"""Server side of secure aggregation inside the ai4hi controller (adapter around the pure protocol).

:class:`SecureRounds` drives the protocol tasks through the controller's ``send_model_and_wait``
(see :mod:`ai4hi_sdk.jobs.wire` for the task names) and hands the controller, per round, only the
unmasked **sum**: the weighted mean delta, the total weight and the consortium means of the
metrics. One round is three exchanges::

    train (masked vector + header, next round's keys) -> consistency (each survivor signs the
    survivor set) -> unmask (>= t signatures relayed; shares back, next round's shares with them)

A round that cannot be unmasked safely raises :class:`RoundAbandoned`: before any unmask request
goes out when too few sites survive or sign, in ``finish`` when shares do not rebuild what their
owners signed, and after unmasking when the sum is impossible for in-range inputs (``decode``). The
controller then keeps its last good model. Every rejected message (not a delta, wrong round,
duplicate, bad signature, ...) is kept in :attr:`SecureRounds.rejections` with its reason and logged;
every refusal of a site in :attr:`SecureRounds.refused` (:func:`~ai4hi_sdk.jobs.site_results.refusal_record`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from ai4hi_sdk.jobs.wire import (ADVERT, CONSISTENCY, CONSISTENCY_TASK, DROPPED_KEY, KEYS_TASK, MASKED, MASKED_HEADER,
                                 NUM_SITES_KEY, REFUSED_KEY, SECAGG_META, SECAGG_SITES, SHARES, SHARES_TASK,
                                 TRAIN_TASK, UNMASK, UNMASK_TASK)
from ai4hi_sdk.jobs.site_results import refusal_record
from ai4hi_sdk.site.secagg_client import codec_for, from_wire
from ai4hi_sdk.privacy.secagg.protocol import PayloadCodec, RoundAbandoned, SecAggRound
from ai4hi_sdk.privacy.secagg.protocol.identity import ROOT_CA, CertificateVerifier

SendAndWait = Callable[..., list]
#: ``(site, message)`` pairs as they arrived (a site answering twice appears twice: the protocol rejects it)
Pairs = list[tuple[str, Any]]


@dataclass
class RoundOutcome:
    """What the controller learns from one securely aggregated round."""

    mean_delta: dict[str, torch.Tensor]
    total_weight: int
    survivors: list[str]
    dropped: list[str]
    metric_means: dict[str, float]
    clear_metrics: dict[str, dict[str, float]]  # per site, only when secure_metrics is off
    error_bound: float
    threshold: int = 0
    refused: list[dict] = field(default_factory=list)


def site_of(result: FLModel) -> str:
    return (result.meta or {}).get("client_name", "unknown")


def _array(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


class SecureRounds:
    """Protocol driver for one job.

    Args:
        spec: the job spec (its ``privacy.secure_aggregation`` section).
        job_id: the NVFlare job id (every protocol message is bound to it).
        sites: the job's fixed site set (told to every site, which keeps only its consortium's sites).
        initial_state: exchanged state (names and shapes of the payload).
        declared_metrics: metric names sites may send.
        send_and_wait: the controller's ``send_model_and_wait``.
        workspace_root: the server's workspace; with ``startup/rootCA.pem`` there the server
            checks key and consistency signatures too (sites always do).
        log: ``log(level, message)``.
    """

    def __init__(self, spec: Any, job_id: str, sites: list[str], initial_state: dict[str, torch.Tensor],
                 declared_metrics: frozenset[str], send_and_wait: SendAndWait, workspace_root: str | Path | None,
                 log: Callable[[str, str], None]):
        self.spec = spec.privacy.secure_aggregation
        self.config = self.spec.protocol_config()
        self.job_id, self.sites, self.n_sites = job_id, sorted(sites), len(sites)
        self.codec: PayloadCodec = codec_for(self.spec, initial_state, declared_metrics, self.n_sites)
        self.send_and_wait, self.log = send_and_wait, log
        root = Path(workspace_root) / "startup" / ROOT_CA if workspace_root else None
        self.verify = CertificateVerifier(root.read_bytes()).check if root is not None and root.is_file() else None
        self.rejections: list[dict] = []
        self.refused: list[dict] = []
        self._rounds: dict[int, SecAggRound] = {}
        self._inboxes: dict[str, dict[str, bytes]] = {}

    # ---------------------------------------------------------------- helpers
    def _round(self, r: int) -> SecAggRound:
        if r not in self._rounds:
            self._rounds[r] = SecAggRound(self.job_id, r, self.config, self.codec.length, verify=self.verify,
                                          participants=frozenset(self.sites))
        return self._rounds[r]

    def _ask(self, task: str, targets: list[str], meta: dict, *, params: dict | None = None,
             timeout: float | None = None, round_index: int = 0, total_rounds: int | None = None) -> list[FLModel]:
        data = FLModel(params=params or {}, params_type=ParamsType.FULL, current_round=round_index,
                       total_rounds=total_rounds,
                       meta={NUM_SITES_KEY: self.n_sites, SECAGG_META: {SECAGG_SITES: list(self.sites), **meta}})
        return self.send_and_wait(task_name=task, data=data, targets=targets, min_responses=len(targets),
                                  timeout=int(timeout if timeout is not None else self.config.share_timeout_s))

    def _reject(self, round_index: int, site: str, step: str, reason: str) -> None:
        self.rejections.append({"round": round_index, "site": site, "step": step, "reason": reason})
        self.log("warning", f"secure aggregation rejected {site} at {step} in round {round_index}: {reason}")

    def _refusal(self, site: str, meta: dict, round_index: int, step: str) -> None:
        self.refused.append(refusal_record(site, meta, round_index))
        self.log("warning", f"{site} refused secure-aggregation step {step} of round {round_index}: {meta[REFUSED_KEY]}")

    def _answers(self, results: list[FLModel], key: str, round_index: int, step: str,
                 task_round: int | None = None) -> Pairs:
        """``(site, protocol bytes under key)`` per answer for protocol round ``round_index``, from
        results of a task of round ``task_round`` (default the same; next round's shares ride on this
        round's unmask). Refusals are recorded, (injected) drops are just absent, a result for
        another task round is rejected."""
        task_round = round_index if task_round is None else task_round
        out: Pairs = []
        for result in results:
            site, meta = site_of(result), result.meta or {}
            if meta.get(REFUSED_KEY):
                if task_round == round_index:  # a refusal of the task is recorded once, for its round
                    self._refusal(site, meta, round_index, step)
                continue
            if meta.get(DROPPED_KEY):
                continue
            if result.current_round is not None and int(result.current_round) != task_round:
                self._reject(round_index, site, step, f"result is for round {result.current_round}, "
                                                      f"the task was for round {task_round}")
                continue
            value = (result.params or {}).get(key)
            if value is None:
                continue
            try:
                out.append((site, from_wire(value)))
            except ValueError as err:
                self._reject(round_index, site, step, str(err))
        return out

    def _note(self, rnd: SecAggRound) -> None:
        for rejection in rnd.rejections:
            if rejection not in self.rejections:
                self._reject(rejection["round"], rejection["site"], rejection["step"], rejection["reason"])

    @property
    def next_participants(self) -> list[str]:
        """Sites holding keys and shares for the next round (they can take part in it)."""
        return sorted(self._inboxes)

    # ---------------------------------------------------------------- once per job
    def setup(self, sites: list[str]) -> list[str]:
        """Keys and shares for round 0; returns the sites that can take part in it."""
        rnd = self._round(0)
        try:
            adverts = self._answers(self._ask(KEYS_TASK, sites, {"round": 0}), ADVERT, 0, "advertise")
            relay = rnd.collect_adverts(adverts)
            shares = self._answers(self._ask(SHARES_TASK, sorted(rnd.adverts), {"round": 0, "adverts": relay}),
                                   SHARES, 0, "share")
            self._inboxes = rnd.collect_shares(shares)
        finally:
            self._note(rnd)
        return sorted(self._inboxes)

    # ---------------------------------------------------------------- one round
    def _train_results(self, results: list[FLModel], r: int) -> tuple[Pairs, Pairs, dict[str, dict[str, float]]]:
        """Split training results into masked inputs ``(site, (header, vector))``, next round's
        advertisements and clear metrics; anything that is not a masked delta of this round is
        rejected with its reason."""
        inputs: Pairs = []
        adverts_next: Pairs = []
        clear: dict[str, dict[str, float]] = {}
        for result in results:
            site, meta, params = site_of(result), result.meta or {}, result.params or {}
            if meta.get(REFUSED_KEY):
                self._refusal(site, meta, r, "train")
                continue
            if meta.get(DROPPED_KEY):
                continue
            reason = None
            if result.params_type != ParamsType.DIFF:
                reason = f"expected a masked model delta (DIFF), got {result.params_type}"
            elif result.current_round is None or int(result.current_round) != r:
                reason = f"result is for round {result.current_round}, current round is {r}"
            elif MASKED not in params or MASKED_HEADER not in params:
                reason = "no masked vector with its header"
            if reason:
                self._reject(r, site, "input", reason)
                continue
            try:
                inputs.append((site, (from_wire(params[MASKED_HEADER]), np.ascontiguousarray(_array(params[MASKED])))))
                if ADVERT in params:
                    adverts_next.append((site, from_wire(params[ADVERT])))
            except ValueError as err:
                self._reject(r, site, "input", f"bad protocol entry: {err}")
                continue
            clear[site] = dict(result.metrics or {})
        return inputs, adverts_next, clear

    def train_round(self, state: dict[str, torch.Tensor], r: int, total_rounds: int,
                    train_timeout: float, min_inputs: int = 1) -> RoundOutcome:
        """Send the model, collect masked inputs, check consistency, unmask and bound the sum.
        Raises RoundAbandoned (the caller keeps its last good model)."""
        rnd = self._round(r)
        targets = sorted(self._inboxes)
        has_next = r + 1 < total_rounds
        meta = {"round": r, "inboxes": self._inboxes, "next_round": r + 1 if has_next else None}
        results = self._ask(TRAIN_TASK, targets, meta, params=state, timeout=train_timeout, round_index=r,
                            total_rounds=total_rounds)
        inputs, adverts_next, clear = self._train_results(results, r)
        try:
            rnd.collect_inputs(inputs)
            if len(rnd.inputs) < min_inputs:
                raise RoundAbandoned(f"round {r}: {len(rnd.inputs)} masked inputs, the job needs {min_inputs}")
            proposal = rnd.consistency_request()  # RoundAbandoned: nothing requested, nothing revealed
            results = self._ask(CONSISTENCY_TASK, sorted(rnd.inputs), {"round": r, "request": proposal},
                                timeout=self.config.unmask_timeout_s, round_index=r, total_rounds=total_rounds)
            request = rnd.collect_consistency(self._answers(results, CONSISTENCY, r, "consistency"))
        finally:
            self._note(rnd)
        relay_next = None
        if has_next:
            try:
                relay_next = self._round(r + 1).collect_adverts(adverts_next)
            except RoundAbandoned as err:
                self.log("warning", f"round {r + 1} cannot run securely: {err}")
            self._note(self._round(r + 1))
        results = self._ask(UNMASK_TASK, rnd.unmask_targets(), {"round": r, "request": request,
                                                                "adverts_next": relay_next},
                            timeout=self.config.unmask_timeout_s, round_index=r, total_rounds=total_rounds)
        self._inboxes = {}
        try:
            rnd.finish(self._answers(results, UNMASK, r, "unmask"))
            decoded = rnd.decode(self.codec)  # RoundAbandoned: the sum is impossible for in-range inputs
        finally:
            self._note(rnd)
        survivors = list(rnd.survivors)
        if relay_next is not None:
            nxt = self._round(r + 1)
            self._inboxes = nxt.collect_shares(self._answers(results, SHARES, r + 1, "share", task_round=r))
            self._note(nxt)
        del self._rounds[r]
        return RoundOutcome(
            mean_delta={k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in decoded.mean_delta.items()},
            total_weight=decoded.total_weight, survivors=survivors, dropped=list(rnd.request.dropped),
            metric_means=decoded.metric_means, clear_metrics={s: clear[s] for s in survivors if clear.get(s)},
            error_bound=self.codec.error_bound(len(survivors), decoded.total_weight), threshold=rnd.threshold,
            refused=[x for x in self.refused if x["round"] == r])

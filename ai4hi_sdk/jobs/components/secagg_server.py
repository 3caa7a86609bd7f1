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
every refusal of a site in :attr:`SecureRounds.refused`. Every answer is sorted into refused, dropped,
rejected or accepted by :func:`~ai4hi_sdk.jobs.site_results.classify_result`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from ai4hi_sdk.jobs.run_record import Refusal, Rejection
from ai4hi_sdk.jobs.site_results import Check, SiteResult, classify_result, metrics_problem, wrong_round
from ai4hi_sdk.jobs.wire import (ADVERT, CONSISTENCY, CONSISTENCY_TASK, KEYS_TASK, MASKED, MASKED_HEADER, NUM_SITES_KEY,
                                 SECAGG_META, SECAGG_SITES, SHARES, SHARES_TASK, TRAIN_TASK, UNMASK, UNMASK_TASK)
from ai4hi_sdk.site.secagg_client import from_wire
from ai4hi_sdk.privacy.secagg.protocol import PayloadCodec, RoundAbandoned, SecAggRound
from ai4hi_sdk.privacy.secagg.settings import codec_for, protocol_config
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
        self.config = protocol_config(spec.privacy.secure_aggregation)
        self.job_id, self.sites, self.n_sites = job_id, sorted(sites), len(sites)
        self.codec: PayloadCodec = codec_for(self.config, initial_state, declared_metrics, self.n_sites)
        self.send_and_wait, self.log = send_and_wait, log
        root = Path(workspace_root) / "startup" / ROOT_CA if workspace_root else None
        self.verify = CertificateVerifier(root.read_bytes()).check if root is not None and root.is_file() else None
        self.rejections: list[Rejection] = []
        self.refused: list[Refusal] = []
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
                                  timeout=int(timeout if timeout is not None else self.config.key_timeout_s))

    def _reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)
        self.log("warning", f"secure aggregation rejected {rejection.site} at {rejection.step} in round "
                            f"{rejection.round}: {rejection.reason}")

    def _refusal(self, refusal: Refusal, step: str) -> None:
        self.refused.append(refusal)
        self.log("warning", f"{refusal.site} refused secure-aggregation step {step} of round {refusal.round}: "
                            f"{refusal.reason}")

    def _classify(self, result: FLModel, checks: list[Check], round_index: int, step: str) -> SiteResult:
        """Sort one answer (:func:`classify_result`); a rejection is kept and logged here."""
        sorted_ = classify_result(result.meta, checks, round_index=round_index, step=step)
        if sorted_.rejection is not None:
            self._reject(sorted_.rejection)
        return sorted_

    def _answers(self, results: list[FLModel], key: str, round_index: int, step: str,
                 task_round: int | None = None) -> Pairs:
        """``(site, protocol bytes under key)`` per answer for protocol round ``round_index``, from
        results of a task of round ``task_round`` (default the same; next round's shares ride on this
        round's unmask). Refusals are recorded, (injected) drops are just absent, a result for
        another task round is rejected."""
        task_round = round_index if task_round is None else task_round
        out: Pairs = []
        for result in results:
            value = (result.params or {}).get(key)  # None: the answer has nothing for this step
            message: list[bytes] = []
            sorted_ = self._classify(result, [wrong_round(result.current_round, task_round,
                                                          wording="the task was for round"),
                                              _protocol_bytes(value, message)], round_index, step)
            if sorted_.refusal is not None and task_round == round_index:
                self._refusal(sorted_.refusal, step)  # a refusal of the task is recorded once, for its round
            if sorted_.outcome == "accepted" and message:
                out.append((sorted_.site, message[0]))
        return out

    def _note(self, rnd: SecAggRound) -> None:
        for found in rnd.rejections:  # what the protocol's own checks rejected
            rejection = Rejection(round=int(found["round"]), site=str(found["site"]), step=str(found["step"]),
                                  reason=str(found["reason"]))
            if rejection not in self.rejections:
                self._reject(rejection)

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
            parsed: dict[str, Any] = {}
            sorted_ = self._classify(result, _masked_input_checks(result, r, parsed), r, "input")
            if sorted_.refusal is not None:
                self._refusal(sorted_.refusal, "train")
            if sorted_.outcome != "accepted":
                continue
            inputs.append((sorted_.site, parsed["input"]))
            if "advert" in parsed:
                adverts_next.append((sorted_.site, parsed["advert"]))
            clear[sorted_.site] = dict(result.metrics or {})
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
                                timeout=self.config.key_timeout_s, round_index=r, total_rounds=total_rounds)
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
                            timeout=self.config.key_timeout_s, round_index=r, total_rounds=total_rounds)
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
        unmask = rnd.request
        if unmask is None:  # collect_consistency above made it; without it nothing was unmasked
            raise RoundAbandoned(f"round {r}: no unmask request was made")
        del self._rounds[r]
        return RoundOutcome(
            mean_delta={k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in decoded.mean_delta.items()},
            total_weight=decoded.total_weight, survivors=survivors, dropped=list(unmask.dropped),
            metric_means=decoded.metric_means, clear_metrics={s: clear[s] for s in survivors if clear.get(s)},
            error_bound=self.codec.error_bound(len(survivors), decoded.total_weight), threshold=int(rnd.threshold))


def _protocol_bytes(value: Any, out: list[bytes]) -> Check:
    """A protocol answer's bytes must be a 1-D uint8 array (an absent value passes: nothing to read);
    the bytes land in ``out``."""
    def check() -> str | None:
        if value is None:
            return None
        try:
            out.append(from_wire(value))
        except ValueError as err:
            return str(err)
        return None
    return check


def _masked_input_checks(result: FLModel, round_index: int, parsed: dict[str, Any]) -> list[Check]:
    """A secure training result's checks, in order: a masked delta of this round with its header,
    well-formed protocol entries (``parsed``: input, advert) and numeric clear metrics."""
    params = result.params or {}

    def masked_delta() -> str | None:
        if result.params_type != ParamsType.DIFF:
            return f"expected a masked model delta (DIFF), got {result.params_type}"
        return None

    def has_masked() -> str | None:
        return None if MASKED in params and MASKED_HEADER in params else "no masked vector with its header"

    def entries() -> str | None:
        try:
            parsed["input"] = (from_wire(params[MASKED_HEADER]), np.ascontiguousarray(_array(params[MASKED])))
            if ADVERT in params:
                parsed["advert"] = from_wire(params[ADVERT])
        except ValueError as err:
            return f"bad protocol entry: {err}"
        return None

    return [masked_delta, wrong_round(result.current_round, round_index, required=True), has_masked, entries,
            metrics_problem(result.metrics)]

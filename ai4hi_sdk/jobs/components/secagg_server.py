"""Server side of secure aggregation inside the ai4hi controller (adapter around the pure protocol).

:class:`SecureRounds` drives the protocol tasks through the controller's ``send_model_and_wait``
(see :mod:`ai4hi_sdk.jobs.wire` for the task names) and hands the controller, per round, only the
unmasked **sum**: the weighted mean delta, the total weight and the consortium means of the
metrics. A round that cannot be unmasked raises :class:`RoundAbandoned` before any unmask request
goes out, so the controller keeps its last good model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from ai4hi_sdk.jobs.wire import (ADVERT, DROPPED_KEY, KEYS_TASK, MASKED, MASKED_WITH_KEY, NUM_SITES_KEY, REFUSED_KEY,
                                 SECAGG_META, SHARES, SHARES_TASK, TRAIN_TASK, UNMASK, UNMASK_TASK)
from ai4hi_sdk.jobs.site_results import refusal_record
from ai4hi_sdk.site.secagg_client import codec_for, from_wire
from ai4hi_sdk.privacy.secagg.protocol import PayloadCodec, RoundAbandoned, SecAggRound
from ai4hi_sdk.privacy.secagg.protocol.identity import ROOT_CA, CertificateVerifier
from ai4hi_sdk.privacy.secagg.protocol.messages import MaskedInput

SendAndWait = Callable[..., list]


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
    refused: list[dict] = field(default_factory=list)


def site_of(result: FLModel) -> str:
    return (result.meta or {}).get("client_name", "unknown")


class SecureRounds:
    """Protocol driver for one job.

    Args:
        spec: the job spec (its ``privacy.secure_aggregation`` section).
        job_id: the NVFlare job id (every protocol message is bound to it).
        sites: the job's fixed site set.
        initial_state: exchanged state (names and shapes of the payload).
        declared_metrics: metric names sites may send.
        send_and_wait: the controller's ``send_model_and_wait``.
        workspace_root: the server's workspace; with ``startup/rootCA.pem`` there the server
            checks key signatures too (sites always do).
        log: ``log(level, message)``.
    """

    def __init__(self, spec: Any, job_id: str, sites: list[str], initial_state: dict[str, torch.Tensor],
                 declared_metrics: frozenset[str], send_and_wait: SendAndWait, workspace_root: str | Path | None,
                 log: Callable[[str, str], None]):
        self.spec = spec.privacy.secure_aggregation
        self.config = self.spec.protocol_config()
        self.job_id, self.sites, self.n_sites = job_id, list(sites), len(sites)
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
            self._rounds[r] = SecAggRound(self.job_id, r, self.config, self.codec.length, verify=self.verify)
        return self._rounds[r]

    def _ask(self, task: str, targets: list[str], meta: dict, *, params: dict | None = None,
             timeout: float | None = None, round_index: int = 0, total_rounds: int | None = None) -> list[FLModel]:
        data = FLModel(params=params or {}, params_type=ParamsType.FULL, current_round=round_index,
                       total_rounds=total_rounds, meta={NUM_SITES_KEY: self.n_sites, SECAGG_META: meta})
        return self.send_and_wait(task_name=task, data=data, targets=targets, min_responses=len(targets),
                                  timeout=int(timeout if timeout is not None else self.config.share_timeout_s))

    def _answers(self, results: list[FLModel], key: str, round_index: int, step: str) -> dict[str, bytes]:
        """Site -> protocol bytes under ``key``; refusals and (injected) drops are just absent."""
        out: dict[str, bytes] = {}
        for result in results:
            site, meta = site_of(result), result.meta or {}
            if meta.get(REFUSED_KEY):
                self.refused.append(refusal_record(site, meta, round_index))
                self.log("warning", f"{site} refused secure-aggregation step {step} of round {round_index}: "
                         f"{meta[REFUSED_KEY]}")
                continue
            if meta.get(DROPPED_KEY):
                continue
            value = (result.params or {}).get(key)
            if value is None:
                continue
            try:
                out[site] = from_wire(value)
            except ValueError as err:
                self.rejections.append({"round": round_index, "site": site, "step": step, "reason": str(err)})
        return out

    def _note(self, rnd: SecAggRound) -> None:
        for rejection in rnd.rejections:
            if rejection not in self.rejections:
                self.rejections.append(rejection)
                self.log("warning", f"secure aggregation rejected {rejection['site']} at {rejection['step']} "
                         f"in round {rejection['round']}: {rejection['reason']}")

    @property
    def next_participants(self) -> list[str]:
        """Sites holding keys and shares for the next round (they can take part in it)."""
        return sorted(self._inboxes)

    # ---------------------------------------------------------------- once per job
    def setup(self, sites: list[str]) -> list[str]:
        """Keys and shares for round 0; returns the sites that can take part in it."""
        rnd = self._round(0)
        adverts = self._answers(self._ask(KEYS_TASK, sites, {"round": 0}), ADVERT, 0, "advertise")
        relay = rnd.collect_adverts(adverts)
        self._note(rnd)
        shares = self._answers(self._ask(SHARES_TASK, sorted(rnd.adverts), {"round": 0, "adverts": relay}),
                               SHARES, 0, "share")
        self._inboxes = rnd.collect_shares(shares)
        self._note(rnd)
        return sorted(self._inboxes)

    # ---------------------------------------------------------------- one round
    def train_round(self, state: dict[str, torch.Tensor], r: int, total_rounds: int,
                    train_timeout: float, min_inputs: int = 1) -> RoundOutcome:
        """Send the model, collect masked inputs, unmask the sum. Raises RoundAbandoned."""
        rnd = self._round(r)
        targets = sorted(self._inboxes)
        has_next = r + 1 < total_rounds
        meta = {"round": r, "n_sites": self.n_sites, "inboxes": self._inboxes, "next_round": r + 1 if has_next else None}
        results = self._ask(TRAIN_TASK, targets, meta, params=state, timeout=train_timeout, round_index=r,
                            total_rounds=total_rounds)
        vectors, adverts_next, clear = {}, {}, {}
        for result in results:
            site, res_meta, params = site_of(result), result.meta or {}, result.params or {}
            if res_meta.get(REFUSED_KEY):
                self.refused.append(refusal_record(site, res_meta, r))
                continue
            if res_meta.get(DROPPED_KEY) or MASKED not in params:
                continue
            vector = params[MASKED]
            vector = vector.numpy() if hasattr(vector, "numpy") else np.asarray(vector)
            try:
                vectors[site] = MaskedInput(self.job_id, r, site, np.ascontiguousarray(vector),
                                            tuple(res_meta.get(MASKED_WITH_KEY) or ())).encode()
            except Exception as err:  # e.g. a dtype the wire encoding refuses
                self.rejections.append({"round": r, "site": site, "step": "input", "reason": f"bad vector: {err}"})
                continue
            if ADVERT in params:
                adverts_next[site] = from_wire(params[ADVERT])
            clear[site] = dict(result.metrics or {})
        rnd.collect_inputs(vectors)
        self._note(rnd)
        if len(rnd.inputs) < min_inputs:
            raise RoundAbandoned(f"round {r}: {len(rnd.inputs)} masked inputs, the job needs {min_inputs}")
        request = rnd.unmask_request()  # RoundAbandoned: nothing requested, nothing revealed
        relay_next = None
        if has_next:
            try:
                relay_next = self._round(r + 1).collect_adverts(adverts_next)
            except RoundAbandoned as err:
                self.log("warning", f"round {r + 1} cannot run securely: {err}")
            self._note(self._round(r + 1))
        survivors = sorted(rnd.inputs)
        results = self._ask(UNMASK_TASK, survivors, {"round": r, "request": request, "adverts_next": relay_next},
                            timeout=self.config.unmask_timeout_s, round_index=r, total_rounds=total_rounds)
        total, survivors = rnd.finish(self._answers(results, UNMASK, r, "unmask"))
        self._note(rnd)
        self._inboxes = {}
        if relay_next is not None:
            self._inboxes = self._round(r + 1).collect_shares(self._answers(results, SHARES, r + 1, "share"))
            self._note(self._round(r + 1))
        decoded = self.codec.decode(total, len(survivors))
        del self._rounds[r]
        return RoundOutcome(
            mean_delta={k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in decoded.mean_delta.items()},
            total_weight=decoded.total_weight, survivors=survivors, dropped=list(rnd.request.dropped),
            metric_means=decoded.metric_means, clear_metrics={s: clear[s] for s in survivors if clear.get(s)},
            error_bound=self.codec.error_bound(len(survivors), decoded.total_weight),
            refused=[x for x in self.refused if x["round"] == r])

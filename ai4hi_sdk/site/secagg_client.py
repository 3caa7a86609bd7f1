"""Site side of secure aggregation (adapter around the pure protocol client), part of the
site-owned runtime.

:class:`SecureAggregationSite` answers the protocol tasks and turns a training round's result into
a masked uint32 vector. It fails closed: if any step cannot be done safely (identity missing, a key
that does not verify, too few neighbours, a delta that cannot be quantised) it raises
:class:`~ai4hi_sdk.errors.RoundRefused` and nothing of the update is sent.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.jobs.wire import (ACCOUNTING_METRICS, ADVERT, KEYS_TASK, MASKED, MASKED_WITH_KEY, SHARES, SHARES_TASK,
                                 UNMASK, UNMASK_TASK)
from ai4hi_sdk.privacy.secagg.protocol import PayloadCodec, ProtocolError, SecAggClient
from ai4hi_sdk.privacy.secagg.protocol.identity import CertificateVerifier, IdentityError, SiteIdentity
from ai4hi_sdk.privacy.secagg.protocol.messages import MaskedInput

#: fault injection for tests and demos: "site:stage[@round][,site:stage[@round]...]"
DROP_ENV = "AI4HI_SECAGG_DROP"
DROP_STAGES = ("after-advertise", "after-shares", "after-input")


def to_wire(data: bytes) -> np.ndarray:
    """Protocol bytes as a uint8 array (an NVFlare params entry)."""
    return np.frombuffer(data, dtype=np.uint8).copy()


def from_wire(value: object) -> bytes:
    """Inverse of :func:`to_wire`; accepts numpy or torch uint8 arrays."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(f"protocol message must be a 1-D uint8 array, got {arr.dtype} {arr.shape}")
    return arr.tobytes()


def parse_drops(text: str | None) -> dict[str, tuple[str, int]]:
    """``"hospital-2:after-shares@1"`` -> ``{"hospital-2": ("after-shares", 1)}`` (round 0 by default)."""
    drops: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        site, _, rest = item.partition(":")
        stage, _, rnd = rest.partition("@")
        if not site or stage not in DROP_STAGES or (rnd and not rnd.isdigit()):
            raise ValueError(f"bad drop '{item}': expected SITE:STAGE[@ROUND] with STAGE one of {', '.join(DROP_STAGES)}")
        drops[site] = (stage, int(rnd or 0))
    return drops


def drop_for(site: str) -> tuple[str, int] | None:
    """This site's injected drop from the environment, if any."""
    return parse_drops(os.environ.get(DROP_ENV)).get(site)


def masked_metric_names(declared_metrics: frozenset[str], secure_metrics: bool) -> tuple[str, ...]:
    """Metrics that travel inside the masked vector (consortium means only): every declared metric
    but the accounting ones, which travel in the clear; none when ``secure_metrics`` is off (then
    statistics of the local training do not leave at all)."""
    return tuple(sorted(set(declared_metrics) - set(ACCOUNTING_METRICS))) if secure_metrics else ()


def codec_for(secure_aggregation: Any, initial_state: Mapping[str, Any], declared_metrics: frozenset[str],
              n_sites: int) -> PayloadCodec:
    """The job's payload layout: same at every site and at the server (built from the spec)."""
    sa = secure_aggregation
    tensors = tuple((name, tuple(initial_state[name].shape)) for name in sorted(initial_state))
    return PayloadCodec(tensors, n_sites=n_sites, clip=sa.clip, max_weight=sa.max_samples_per_site,
                        metric_names=masked_metric_names(declared_metrics, sa.secure_metrics))


class SecureAggregationSite:
    """Protocol state of one site for one job.

    Args:
        secure_aggregation: the job's ``privacy.secure_aggregation`` settings.
        site: this site's name (as in its certificate).
        job_id: the job (every message is bound to it).
        workspace: the site workspace (its provisioned identity in ``startup/``).
        initial_state: the exchanged state layout (names and shapes).
        declared_metrics: metric names the site's trainer may report.
    """

    def __init__(self, secure_aggregation: Any, site: str, job_id: str, workspace: str | Path | None,
                 initial_state: Mapping[str, Any], declared_metrics: frozenset[str]):
        self.spec = secure_aggregation
        self.site, self.job_id, self.workspace = site, job_id, workspace
        self.initial_state, self.declared_metrics = initial_state, declared_metrics
        self._client: SecAggClient | None = None
        self._codec: PayloadCodec | None = None
        self.drop = drop_for(self.site)
        #: set once a fault-injected drop happened: the site answers nothing from then on
        self.dropped = False

    @property
    def client(self) -> SecAggClient:
        if self._client is None:
            if self.workspace is None:
                raise RoundRefused("secure aggregation needs the site workspace (its provisioned identity)")
            try:
                identity = SiteIdentity.load(Path(self.workspace) / "startup", self.site)
                verifier = CertificateVerifier(identity.root_ca_pem)
                config = self.spec.protocol_config()
            except (IdentityError, ValueError) as err:
                raise RoundRefused(f"secure aggregation: {err}") from None
            self._client = SecAggClient(self.site, self.job_id, config, sign=identity.sign,
                                        certificate=identity.certificate_pem, verify=verifier.check)
        return self._client

    def codec(self, n_sites: int) -> PayloadCodec:
        if self._codec is None or self._codec.n_sites != n_sites:
            self._codec = codec_for(self.spec, self.initial_state, self.declared_metrics, n_sites)
        return self._codec

    def participants(self, round_index: int) -> tuple[int, int]:
        """``(n, t)``: how many participants this site verified for the round (itself included)
        and the threshold it shares with; the site's own view, never the server's claim."""
        state = getattr(self.client, "_rounds", {}).get(round_index)
        if state is None or not state.adverts:
            raise RoundRefused(f"secure aggregation: no verified participants for round {round_index}")
        return len(state.adverts), int(state.threshold)

    def _maybe_drop(self, stage: str, round_index: int) -> None:
        if self.drop == (stage, round_index):
            print(f"[ai4hi] {self.site}: fault injection: dropping out {stage} of round {round_index}")
            self.dropped = True

    # ---------------------------------------------------------------- protocol tasks
    def handle(self, task: str, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Answer a protocol task; returns the result params (uint8 arrays)."""
        try:
            if task == KEYS_TASK:
                r = int(meta["round"])
                out = {ADVERT: to_wire(self.client.advertise(r))}
                self._maybe_drop("after-advertise", r)
                return out
            if task == SHARES_TASK:
                r = int(meta["round"])
                out = {SHARES: to_wire(self.client.share_keys(r, list(meta["adverts"])))}
                self._maybe_drop("after-shares", r)
                return out
            if task == UNMASK_TASK:
                return self._unmask(meta)
        except ProtocolError as err:
            raise RoundRefused(f"secure aggregation: {err.reason}") from None
        raise RoundRefused(f"unknown secure-aggregation task {task!r}")

    def _unmask(self, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
        r = int(meta["round"])
        out = {UNMASK: to_wire(self.client.unmask(r, meta["request"]))}
        if meta.get("adverts_next"):
            try:
                out[SHARES] = to_wire(self.client.share_keys(r + 1, list(meta["adverts_next"])))
            except ProtocolError as err:  # this round is done; we just do not take part in the next
                print(f"[ai4hi] {self.site}: not joining round {r + 1}: {err.reason}")
                self.client.forget(r + 1)
            else:
                self._maybe_drop("after-shares", r + 1)
        return out

    # ---------------------------------------------------------------- training round
    def check_weight(self, meta: Mapping[str, Any], num_samples: int) -> None:
        """Before training: the site's weight must fit the job's public bound (else the masked sum
        could not be decoded); refuse now, before anything is spent."""
        if num_samples > self.spec.max_samples_per_site:
            raise RoundRefused(f"secure aggregation: this site's training split ({num_samples} examples) exceeds "
                               f"the job's max_samples_per_site ({self.spec.max_samples_per_site})")
        self.codec(int(meta["n_sites"]))  # the layout must be buildable (overflow guard)

    def package(self, meta: Mapping[str, Any]):
        """An ``encode`` callback: quantise + mask the delta.

        Returns ``encode(delta, metrics, num_samples) -> (params, clear_metrics, result_meta)``;
        only the accounting metrics travel in the clear.
        """
        r, n_sites = int(meta["round"]), int(meta["n_sites"])
        inbox = dict((meta.get("inboxes") or {}).get(self.site) or {})
        next_round = meta.get("next_round")

        def encode(delta: Mapping[str, Any], metrics: Mapping[str, float], num_samples: int):
            codec = self.codec(n_sites)
            try:
                arrays = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
                          for k, v in delta.items()}
                vector = codec.encode(arrays, int(num_samples), {k: v for k, v in metrics.items() if k in codec.metric_names})
                masked = MaskedInput.decode(self.client.mask(r, inbox, vector), self.job_id, r, codec.length)
            except (ProtocolError, ValueError) as err:
                raise RoundRefused(f"secure aggregation: {getattr(err, 'reason', err)}") from None
            params: dict[str, np.ndarray] = {MASKED: masked.vector}
            if next_round is not None:
                params[ADVERT] = to_wire(self.client.advertise(int(next_round)))
            clear = {k: v for k, v in metrics.items() if k in ACCOUNTING_METRICS}
            return params, clear, {MASKED_WITH_KEY: list(masked.masked_with)}

        return encode

    def after_train(self, meta: Mapping[str, Any]) -> None:
        r = int(meta["round"])
        self._maybe_drop("after-input", r)
        if meta.get("next_round") is not None:
            self._maybe_drop("after-advertise", int(meta["next_round"]))

    def forget(self, round_index: int) -> None:
        if self._client is not None:
            self._client.forget(round_index)

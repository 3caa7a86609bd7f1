"""Site side of secure aggregation inside an NVFlare job (adapter around the pure protocol client).

:class:`SecureAggregationSite` answers the protocol tasks and turns a training round's result into
a masked uint32 vector. It fails closed: if any step cannot be done safely (identity missing, a key
that does not verify, too few neighbours, a delta that cannot be quantised) the site raises
:class:`~ai4hi_sdk.privacy.dp.site_guard.RoundRefused` and nothing of the update is sent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ai4hi_sdk.jobs.components.secagg_wire import (ADVERT, KEYS_TASK, MASKED, SHARES, SHARES_TASK, UNMASK,
                                                   UNMASK_TASK, drop_for, to_wire)
from ai4hi_sdk.privacy.dp.site_guard import RoundRefused
from ai4hi_sdk.privacy.secagg.protocol import PayloadCodec, ProtocolError, SecAggClient
from ai4hi_sdk.privacy.secagg.protocol.identity import CertificateVerifier, IdentityError, SiteIdentity
from ai4hi_sdk.privacy.secagg.protocol.messages import MaskedInput

#: metrics never sent in the clear under secure aggregation: they are the site's weight
SIZE_METRICS = ("train_samples",)
#: result meta key listing the neighbours a masked vector was masked with
MASKED_WITH_KEY = "ai4hi_masked_with"


def codec_for(spec: Any, initial_state: Mapping[str, torch.Tensor], declared_metrics: frozenset[str],
              n_sites: int) -> PayloadCodec:
    """The job's payload layout: same at every site and at the server (built from the spec)."""
    sa = spec.privacy.secure_aggregation
    tensors = tuple((name, tuple(initial_state[name].shape)) for name in sorted(initial_state))
    metrics = tuple(sorted(declared_metrics)) if sa.secure_metrics else ()
    return PayloadCodec(tensors, n_sites=n_sites, clip=sa.clip, max_weight=sa.max_samples_per_site,
                        metric_names=metrics)


class SecureAggregationSite:
    """Protocol state of one site for one job.

    Args:
        trainer: the site's :class:`~ai4hi_sdk.trainers.site_trainer.SiteTrainer` (spec, workspace,
            site name, job id, exchanged state layout).
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.spec = trainer.spec.privacy.secure_aggregation
        self.site = trainer.site_name
        self._client: SecAggClient | None = None
        self._codec: PayloadCodec | None = None
        self.drop = drop_for(self.site)
        #: set once a fault-injected drop happened: the site answers nothing from then on
        self.dropped = False

    @property
    def client(self) -> SecAggClient:
        if self._client is None:
            workspace = self.trainer.site_workspace
            if workspace is None:
                raise RoundRefused("secure aggregation needs the site workspace (its provisioned identity)")
            try:
                identity = SiteIdentity.load(Path(workspace) / "startup", self.site)
                verifier = CertificateVerifier(identity.root_ca_pem)
                config = self.spec.protocol_config()
            except (IdentityError, ValueError) as err:
                raise RoundRefused(f"secure aggregation: {err}") from None
            self._client = SecAggClient(self.site, self.trainer.job_id, config, sign=identity.sign,
                                        certificate=identity.certificate_pem, verify=verifier.check)
        return self._client

    def codec(self, n_sites: int) -> PayloadCodec:
        if self._codec is None or self._codec.n_sites != n_sites:
            self._codec = codec_for(self.trainer.spec, self.trainer.initial_state(),
                                    self.trainer.declared_metrics(), n_sites)
        return self._codec

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
    def package(self, meta: Mapping[str, Any]):
        """An ``encode`` callback for :meth:`SiteTrainer.fit`: quantise + mask the delta.

        Returns ``encode(delta, metrics, num_samples) -> (params, clear_metrics, result_meta)``.
        """
        r, n_sites = int(meta["round"]), int(meta["n_sites"])
        inbox = dict((meta.get("inboxes") or {}).get(self.site) or {})
        next_round = meta.get("next_round")

        def encode(delta: Mapping[str, torch.Tensor], metrics: Mapping[str, float], num_samples: int):
            codec = self.codec(n_sites)
            try:
                vector = codec.encode({k: v.detach().cpu().numpy() for k, v in delta.items()}, int(num_samples),
                                      metrics)
                masked = MaskedInput.decode(self.client.mask(r, inbox, vector), self.trainer.job_id, r, codec.length)
            except (ProtocolError, ValueError) as err:
                raise RoundRefused(f"secure aggregation: {getattr(err, 'reason', err)}") from None
            params: dict[str, np.ndarray] = {MASKED: masked.vector}
            if next_round is not None:
                params[ADVERT] = to_wire(self.client.advertise(int(next_round)))
            clear = {} if codec.metric_names else {k: v for k, v in metrics.items() if k not in SIZE_METRICS}
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

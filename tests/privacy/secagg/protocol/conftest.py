"""A consortium of unmodified protocol clients with real identities (a throwaway CA, or the kits of a
consortium provisioned with ``ai4hi provision``), and an honest server that drives them."""
from __future__ import annotations

import numpy as np
import pytest

from ai4hi_sdk.privacy.secagg.protocol import (PayloadCodec, ProtocolError, SecAggClient, SecAggConfig, SecAggRound,
                                               SitePolicy)
from ai4hi_sdk.privacy.secagg.protocol.identity import CertificateVerifier, SiteIdentity, make_throwaway_ca


class Consortium:
    """``clients[site]``: one :class:`SecAggClient` per site, all pinned to ``sites``.

    Args:
        identities: site -> identity; ``None`` makes a throwaway CA under ``tmp_path``.
        policy: every site's :class:`SitePolicy` (or a dict site -> policy).
        server_names: the server identities every site refuses (from its kit).
    """

    def __init__(self, tmp_path, sites, config=None, job_id="job-1", policy=None, identities=None, root=None,
                 server_names=(), reveal_check=None):
        self.sites, self.job_id = list(sites), job_id
        self.config = config or SecAggConfig()
        if identities is None:
            self.root = make_throwaway_ca(self.sites, {s: tmp_path / s for s in self.sites})
            identities = {s: SiteIdentity.load(tmp_path / s, s) for s in self.sites}
        else:
            self.root = root
        self.identities = identities
        self.verifier = CertificateVerifier(self.root, server_names=server_names)
        policies = policy if isinstance(policy, dict) else {s: policy or SitePolicy() for s in self.sites}
        self.clients = {s: SecAggClient(s, job_id, self.config, sign=identities[s].sign,
                                        certificate=identities[s].certificate_pem, verify=self.verifier.check,
                                        participants=self.sites, policy=policies[s], reveal_check=reveal_check)
                        for s in self.sites}

    def server(self, round_index, length, **kw):
        kw.setdefault("participants", frozenset(self.sites))
        return SecAggRound(self.job_id, round_index, self.config, length, verify=self.verifier.check, **kw)

    def until_inputs(self, round_index, vectors, *, drop_before_shares=(), drop_before_input=(), received=None):
        """Advertise, share and mask; returns the server after collecting the inputs."""
        length = len(next(iter(vectors.values())))
        srv = self.server(round_index, length)
        rec = received if received is not None else []

        def got(step, msgs):
            rec.extend((s, step, m) for s, m in msgs.items())
            return msgs

        adverts = srv.collect_adverts(got("advertise", {s: c.advertise(round_index) for s, c in self.clients.items()}))
        inbox = srv.collect_shares(got("share", {s: c.share_keys(round_index, adverts)
                                                 for s, c in self.clients.items() if s not in drop_before_shares}))
        srv.collect_inputs(got("input", {s: self.clients[s].mask(round_index, inbox[s], vectors[s].copy())
                                         for s in inbox if s not in drop_before_input}))
        return srv

    @staticmethod
    def _answers(sites, ask):
        """Each site's answer; a site that refuses (ProtocolError) sends nothing, as in the runtime."""
        out = {}
        for s in sites:
            try:
                out[s] = ask(s)
            except ProtocolError:
                pass
        return out

    def run(self, round_index, vectors, *, drop_before_shares=(), drop_before_input=(), drop_before_consistency=(),
            drop_before_unmask=(), received=None, tamper=None):
        """One full round with an honest server; returns (server, unmasked sum, survivors).
        ``received`` collects every message the server got (site, step, bytes); ``tamper(site,
        response) -> response`` may alter unmask responses on their way."""
        rec = received if received is not None else []
        srv = self.until_inputs(round_index, vectors, drop_before_shares=drop_before_shares,
                                drop_before_input=drop_before_input, received=rec)

        def got(step, msgs):
            rec.extend((s, step, m) for s, m in msgs.items())
            return msgs

        proposal = srv.consistency_request()
        request = srv.collect_consistency(got("consistency", self._answers(
            [s for s in srv.inputs if s not in drop_before_consistency],
            lambda s: self.clients[s].consistency(round_index, proposal))))
        responses = self._answers([s for s in srv.unmask_targets() if s not in drop_before_unmask],
                                  lambda s: self.clients[s].unmask(round_index, request))
        if tamper is not None:
            responses = {s: tamper(s, r) for s, r in responses.items()}
        total, survivors = srv.finish(got("unmask", responses))
        return srv, total, survivors


@pytest.fixture
def consortium(tmp_path):
    return lambda sites, **kw: Consortium(tmp_path, sites, **kw)


@pytest.fixture
def provisioned(kits, tmp_path):
    """A consortium of some of the provisioned hospitals, each with its real kit identity and the
    server identity its kit names (``fed_client.json``)."""
    def make(sites, **kw):
        return Consortium(tmp_path, sites, identities={s: kits.site(s) for s in sites}, root=kits.root_ca,
                          server_names=kits.server_names(sites[0]), **kw)
    return make


@pytest.fixture
def updates():
    rng = np.random.default_rng(7)
    shapes = (("conv.weight", (4, 3, 3)), ("fc.bias", (5,)))

    def make(sites, weights=None):
        weights = weights or {s: 10 * (i + 1) for i, s in enumerate(sites)}
        deltas = {s: {n: rng.normal(0, 0.05, shape).astype(np.float32) for n, shape in shapes} for s in sites}
        codec = PayloadCodec(shapes, n_sites=len(sites), clip=1.0, max_weight=1000,
                             metric_names=("train_loss", "val_auroc"))
        return codec, deltas, weights

    return make

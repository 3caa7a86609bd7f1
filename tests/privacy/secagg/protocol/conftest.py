"""A small consortium of protocol clients with real (throwaway-CA) identities."""
from __future__ import annotations

import numpy as np
import pytest

from ai4hi_sdk.privacy.secagg.protocol import PayloadCodec, SecAggClient, SecAggConfig, SecAggRound
from ai4hi_sdk.privacy.secagg.protocol.identity import CertificateVerifier, SiteIdentity, make_throwaway_ca


class Consortium:
    def __init__(self, tmp_path, sites, config=None, job_id="job-1"):
        self.sites, self.job_id = list(sites), job_id
        self.config = config or SecAggConfig()
        self.root = make_throwaway_ca(self.sites, {s: tmp_path / s for s in self.sites})
        self.clients = {}
        for s in self.sites:
            ident = SiteIdentity.load(tmp_path / s, s)
            self.clients[s] = SecAggClient(s, job_id, self.config, sign=ident.sign,
                                           certificate=ident.certificate_pem,
                                           verify=CertificateVerifier(ident.root_ca_pem).check)

    def server(self, round_index, length):
        return SecAggRound(self.job_id, round_index, self.config, length, verify=CertificateVerifier(self.root).check)

    def run(self, round_index, vectors, *, drop_before_shares=(), drop_before_input=(), drop_before_unmask=(),
            received=None):
        """One full round; returns (server, unmasked sum, survivors). ``received`` collects every
        message the server got (site, step, bytes)."""
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
        request = srv.unmask_request()
        total, survivors = srv.finish(got("unmask", {s: self.clients[s].unmask(round_index, request)
                                                     for s in srv.inputs if s not in drop_before_unmask}))
        return srv, total, survivors


@pytest.fixture
def consortium(tmp_path):
    return lambda sites, **kw: Consortium(tmp_path, sites, **kw)


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

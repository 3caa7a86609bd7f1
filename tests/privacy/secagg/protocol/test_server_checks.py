"""The server state machine's own checks, one test per check, each failing if the check is removed:
signatures (and site roles) of key advertisements, the job's site set, stale or wrong-round messages
at every step, duplicate messages from one site, misrouted messages, consistency signatures."""
from __future__ import annotations

import numpy as np
import pytest

from ai4hi_sdk.privacy.secagg.protocol import RoundAbandoned, SecAggClient, SecAggConfig
from ai4hi_sdk.privacy.secagg.protocol.messages import (AdvertiseKeys, ConsistencySignature, MaskedInput,
                                                        UnmaskResponse)

from ..conftest import LEAD
from .test_protocol import encode_all

SITES = ["hospital-1", "hospital-2", "hospital-3"]


def _reasons(srv, step):
    return {r["site"]: r["reason"] for r in srv.rejections if r["step"] == step}


def test_server_rejects_forged_advertisements_and_does_not_relay_them(provisioned):
    c = provisioned(SITES)
    ads = {s: cl.advertise(0) for s, cl in c.clients.items()}
    ad = AdvertiseKeys.decode(ads["hospital-2"], "job-1", 0)
    swapped = AdvertiseKeys(ad.job_id, 0, ad.site, ad.cipher_pk, bytes(range(32)), ad.self_commitment,
                            ad.certificate, ad.signature).encode()
    srv = c.server(0, 8)
    with pytest.raises(RoundAbandoned, match="2 sites advertised keys"):  # one forged key spoils nothing else ...
        srv.collect_adverts({**ads, "hospital-2": swapped})
    assert "advertisement rejected: bad signature" in _reasons(srv, "advertise")["hospital-2"]
    assert set(srv.adverts) == {"hospital-1", "hospital-3"}  # ... and is never relayed to the sites


def test_server_rejects_admin_certificates_and_sites_outside_the_job(kits, provisioned):
    c = provisioned(SITES)
    ads = {s: cl.advertise(0) for s, cl in c.clients.items()}
    lead = kits.admin(LEAD)
    rogue = SecAggClient(LEAD, "job-1", c.config, sign=lead.sign, certificate=lead.certificate_pem,
                         verify=c.verifier.check, participants=[LEAD, *SITES])
    srv = c.server(0, 8, participants=frozenset([*SITES, LEAD]))  # even if the job listed the lead
    relay = srv.collect_adverts({**ads, LEAD: rogue.advertise(0)})
    assert "an admin certificate (NVFlare role 'lead')" in _reasons(srv, "advertise")[LEAD]
    assert len(relay) == 3 and set(srv.adverts) == set(SITES)
    h4 = kits.site("hospital-4")
    outsider = SecAggClient("hospital-4", "job-1", c.config, sign=h4.sign, certificate=h4.certificate_pem,
                            verify=c.verifier.check, participants=["hospital-4", *SITES]).advertise(0)
    srv = c.server(0, 8)
    srv.collect_adverts({**ads, "hospital-4": outsider})
    assert _reasons(srv, "advertise") == {"hospital-4": "'hospital-4' is not a site of this job"}


def test_server_rejects_a_message_sent_under_another_sites_name(provisioned):
    c = provisioned(SITES)
    ads = {s: cl.advertise(0) for s, cl in c.clients.items()}
    srv = c.server(0, 8)
    with pytest.raises(RoundAbandoned):
        srv.collect_adverts({"hospital-1": ads["hospital-1"], "hospital-2": ads["hospital-3"]})
    assert "names 'hospital-3' but came from 'hospital-2'" in _reasons(srv, "advertise")["hospital-2"]


@pytest.mark.parametrize("step", ["advertise", "share", "input", "consistency", "unmask"])
def test_server_rejects_duplicate_messages_from_one_site(provisioned, updates, step):
    codec, deltas, weights = updates(SITES)
    c = provisioned(SITES)
    vectors = encode_all(codec, deltas, weights)
    srv = c.server(0, codec.length)
    ads = {s: cl.advertise(0) for s, cl in c.clients.items()}

    def dup(msgs, site="hospital-2"):
        return [*msgs.items(), (site, msgs[site])]

    if step == "advertise":
        with pytest.raises(RoundAbandoned):
            srv.collect_adverts(dup(ads))
        assert "duplicate" in _reasons(srv, step)["hospital-2"] and "hospital-2" not in srv.adverts
        return
    relay = srv.collect_adverts(ads)
    shares = {s: cl.share_keys(0, relay) for s, cl in c.clients.items()}
    if step == "share":
        srv.collect_shares(dup(shares))
        assert "duplicate" in _reasons(srv, step)["hospital-2"] and "hospital-2" not in srv.shared
        return
    inbox = srv.collect_shares(shares)
    inputs = {s: c.clients[s].mask(0, inbox[s], vectors[s].copy()) for s in SITES}
    if step == "input":
        srv.collect_inputs(dup(inputs))
        assert "duplicate" in _reasons(srv, step)["hospital-2"] and "hospital-2" not in srv.inputs
        return
    srv.collect_inputs(inputs)
    proposal = srv.consistency_request()
    sigs = {s: c.clients[s].consistency(0, proposal) for s in SITES}
    if step == "consistency":
        with pytest.raises(RoundAbandoned, match="only 2 survivors signed"):
            srv.collect_consistency(dup(sigs))
        assert "duplicate" in _reasons(srv, step)["hospital-2"]
        return
    request = srv.collect_consistency(sigs)
    responses = {s: c.clients[s].unmask(0, request) for s in SITES}
    with pytest.raises(RoundAbandoned, match="too few unmask responses"):
        srv.finish(dup(responses))
    assert "duplicate" in _reasons(srv, step)["hospital-2"]


def test_server_rejects_stale_and_wrong_round_messages_at_every_step(provisioned, updates):
    """Round 0's messages replayed into round 1 are rejected at every step; the vector travelling
    next to its header (as the runtime ships it) is bound to its round and site too."""
    codec, deltas, weights = updates(SITES)
    c = provisioned(SITES)
    vectors = encode_all(codec, deltas, weights)
    received = []
    c.run(0, vectors, received=received)
    old = {(s, step): m for s, step, m in received}
    ads = {s: cl.advertise(1) for s, cl in c.clients.items()}
    srv = c.server(1, codec.length)
    with pytest.raises(RoundAbandoned, match="2 sites advertised keys"):
        srv.collect_adverts({**ads, "hospital-3": old[("hospital-3", "advertise")]})
    assert "round 0 != expected 1" in _reasons(srv, "advertise")["hospital-3"]
    srv = c.server(1, codec.length)  # the genuine advertisements, to reach the later steps
    relay = srv.collect_adverts(ads)
    shares = {s: cl.share_keys(1, relay) for s, cl in c.clients.items()}
    inbox = srv.collect_shares({**shares, "hospital-3": old[("hospital-3", "share")]})
    assert "round 0 != expected 1" in _reasons(srv, "share")["hospital-3"] and "hospital-3" not in inbox
    srv = c.server(1, codec.length)
    srv.collect_adverts(ads)
    inbox = srv.collect_shares(shares)
    stale = MaskedInput.decode(old[("hospital-1", "input")], "job-1", 0, codec.length)
    fresh = {s: MaskedInput.decode(c.clients[s].mask(1, inbox[s], vectors[s].copy()), "job-1", 1, codec.length)
             for s in SITES}
    srv.collect_inputs({"hospital-1": (stale.header(), stale.vector),
                        "hospital-2": (fresh["hospital-2"].header(), fresh["hospital-2"].vector),
                        "hospital-3": (fresh["hospital-2"].header(), fresh["hospital-3"].vector)})
    reasons = _reasons(srv, "input")
    assert "round 0 != expected 1" in reasons["hospital-1"]
    assert "names 'hospital-2' but came from 'hospital-3'" in reasons["hospital-3"]
    assert list(srv.inputs) == ["hospital-2"]


def test_server_rejects_stale_consistency_signatures_and_unmask_responses(provisioned, updates):
    codec, deltas, weights = updates(SITES)
    c = provisioned(SITES)
    vectors = encode_all(codec, deltas, weights)
    received = []
    c.run(0, vectors, received=received)
    old = {(s, step): m for s, step, m in received}
    srv = c.until_inputs(1, vectors)
    proposal = srv.consistency_request()
    sigs = {s: c.clients[s].consistency(1, proposal) for s in SITES}
    with pytest.raises(RoundAbandoned, match="only 2 survivors signed"):
        srv.collect_consistency({**sigs, "hospital-1": old[("hospital-1", "consistency")]})
    assert "round 0 != expected 1" in _reasons(srv, "consistency")["hospital-1"]
    request = srv.collect_consistency(sigs)  # the genuine ones arrive late: the round goes on
    responses = {s: c.clients[s].unmask(1, request) for s in SITES}
    with pytest.raises(RoundAbandoned, match="too few unmask responses"):
        srv.finish({**responses, "hospital-2": old[("hospital-2", "unmask")]})
    assert "round 0 != expected 1" in _reasons(srv, "unmask")["hospital-2"]


def test_server_checks_consistency_signatures(provisioned, updates):
    codec, deltas, weights = updates(SITES)
    c = provisioned(SITES)
    srv = c.until_inputs(0, encode_all(codec, deltas, weights))
    proposal = srv.consistency_request()
    sigs = {s: c.clients[s].consistency(0, proposal) for s in SITES}
    good = ConsistencySignature.decode(sigs["hospital-3"], "job-1", 0)
    forged = ConsistencySignature("job-1", 0, "hospital-3", good.survivors, good.dropped, b"\x00" * 256).encode()
    with pytest.raises(RoundAbandoned, match="consistency check failed"):
        srv.collect_consistency({**sigs, "hospital-3": forged})
    assert "consistency signature rejected: bad signature" in _reasons(srv, "consistency")["hospital-3"]
    other = ConsistencySignature("job-1", 0, "hospital-2", ("hospital-1", "hospital-2"), ("hospital-3",),
                                 b"x").encode()
    srv.signatures.clear()
    with pytest.raises(RoundAbandoned):
        srv.collect_consistency({**sigs, "hospital-2": other})
    assert "signed a different survivor set" in _reasons(srv, "consistency")["hospital-2"]


def test_server_only_takes_unmask_responses_from_the_signers(provisioned, updates):
    sites = ["hospital-1", "hospital-2", "hospital-3", "hospital-4"]
    codec, deltas, weights = updates(sites)
    c = provisioned(sites)
    srv = c.until_inputs(0, encode_all(codec, deltas, weights))
    proposal = srv.consistency_request()
    sigs = {s: c.clients[s].consistency(0, proposal) for s in sites}
    request = srv.collect_consistency({s: sigs[s] for s in sites[:3]})  # hospital-4's signature got lost
    assert srv.unmask_targets() == sites[:3]
    responses = {s: c.clients[s].unmask(0, request) for s in sites}
    total, survivors = srv.finish(responses)
    assert "was not asked" in _reasons(srv, "unmask")["hospital-4"] and survivors == sites
    assert srv.decode(codec).total_weight == sum(weights.values())


def test_server_rejects_responses_that_carry_other_shares_than_requested(provisioned, updates):
    codec, deltas, weights = updates(SITES)

    def extra(site, response):  # hospital-1 also "reveals" a key share nobody asked for
        msg = UnmaskResponse.decode(response, "job-1", 0)
        if site != "hospital-1":
            return response
        return UnmaskResponse("job-1", 0, site, msg.self_shares, {"hospital-2": msg.self_shares["hospital-2"]}).encode()

    c = provisioned(SITES)
    with pytest.raises(RoundAbandoned, match="too few unmask responses"):
        c.run(0, encode_all(codec, deltas, weights), tamper=extra)


def test_server_sees_nothing_from_a_refusing_site_and_abandons_cleanly(provisioned, updates):
    """A site refusing at any step is simply absent: with 3 sites and t = 3 the round is abandoned
    before anything is requested."""
    codec, deltas, weights = updates(SITES)
    c = provisioned(SITES, config=SecAggConfig())
    srv = c.until_inputs(0, encode_all(codec, deltas, weights), drop_before_input={"hospital-3"})
    with pytest.raises(RoundAbandoned, match="2 of 3 sites sent masked inputs"):
        srv.consistency_request()
    assert srv.proposal is None and np.any(srv.aggregate)

"""SecAgg+ client/server state machines with an honest server: correctness against plain FedAvg,
dropout, abandonment, what the server sees, tampering and replay. (The server playing against the
sites: test_active_server.py; the server's own checks: test_server_checks.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ai4hi_sdk.privacy.secagg.protocol import ProtocolError, RoundAbandoned, SecAggConfig, SitePolicy
from ai4hi_sdk.privacy.secagg.protocol.messages import AdvertiseKeys, ConsistencyRequest, MaskedInput, UnmaskRequest

#: a job that asks for t = 2 of 3 and sites whose policy allows it: one dropout can be recovered
TWO_OF_THREE = dict(config=SecAggConfig(threshold=2), policy=SitePolicy(threshold_rule="majority"))


def fedavg(deltas, weights, sites):
    """Plain FedAvg in float64 -- the independent reference."""
    total = sum(weights[s] for s in sites)
    return {n: sum(weights[s] * deltas[s][n].astype(np.float64) for s in sites) / total for n in deltas[sites[0]]}


def encode_all(codec, deltas, weights, metrics=None):
    return {s: codec.encode(deltas[s], weights[s], (metrics or {}).get(s, {"train_loss": 1.0})) for s in deltas}


def check_matches(codec, total, survivors, deltas, weights):
    decoded = codec.decode(total, len(survivors))
    assert decoded.total_weight == sum(weights[s] for s in survivors)
    ref = fedavg(deltas, weights, survivors)
    bound = codec.error_bound(len(survivors), decoded.total_weight)
    for name, value in ref.items():
        err = np.abs(decoded.mean_delta[name] - value).max()
        assert err <= bound, (name, err, bound)
    return decoded


def test_full_round_equals_weighted_fedavg_and_metric_means(consortium, updates):
    sites = ["hospital-1", "hospital-2", "hospital-3"]
    codec, deltas, weights = updates(sites)
    metrics = {"hospital-1": {"train_loss": 0.5, "val_auroc": 0.8}, "hospital-2": {"train_loss": 0.7},
               "hospital-3": {"train_loss": 0.9, "val_auroc": 0.6}}
    c = consortium(sites)
    srv, total, survivors = c.run(0, encode_all(codec, deltas, weights, metrics))
    assert survivors == sites and srv.rejections == []
    decoded = check_matches(codec, total, survivors, deltas, weights)
    assert decoded.metric_counts == {"train_loss": 3, "val_auroc": 2}
    assert decoded.metric_means["train_loss"] == pytest.approx(0.7, abs=1e-3)
    assert decoded.metric_means["val_auroc"] == pytest.approx(0.7, abs=1e-3)


def test_wrong_weighting_would_be_caught(consortium, updates):
    """The reference check is sharp: an unweighted mean differs from the result by far more than the bound."""
    sites = ["a", "b", "c"]
    codec, deltas, weights = updates(sites, {"a": 1, "b": 100, "c": 1000})
    _, total, survivors = consortium(sites).run(0, encode_all(codec, deltas, weights))
    decoded = codec.decode(total, 3)
    unweighted = np.mean([deltas[s]["fc.bias"] for s in sites], axis=0)
    assert np.abs(decoded.mean_delta["fc.bias"] - unweighted).max() > 100 * codec.error_bound(3, 1101)


def test_dropout_after_shares_recovers_the_survivors_sum(consortium, updates):
    sites = ["a", "b", "c"]
    codec, deltas, weights = updates(sites)
    srv, total, survivors = consortium(sites, **TWO_OF_THREE).run(0, encode_all(codec, deltas, weights),
                                                                  drop_before_input={"b"})
    assert survivors == ["a", "c"] and srv.request.dropped == ("b",) and srv.threshold == 2
    check_matches(codec, total, survivors, deltas, weights)


def test_sparse_graph_with_dropouts(consortium, updates):
    sites = [f"s{i}" for i in range(8)]
    codec, deltas, weights = updates(sites)
    c = consortium(sites, config=SecAggConfig(neighbours=4, threshold=3), policy=SitePolicy(threshold_rule="majority"))
    srv, total, survivors = c.run(3, encode_all(codec, deltas, weights), drop_before_shares={"s0"},
                                  drop_before_input={"s3"})
    assert all(len(v) == 4 for v in srv.neighbours.values()) and srv.threshold == 3
    assert set(survivors) == set(sites) - {"s0", "s3"}
    check_matches(codec, total, survivors, deltas, weights)


def test_a_survivor_that_stops_answering_is_still_unmasked_from_its_neighbours(consortium, updates):
    sites = ["a", "b", "c", "d", "e"]
    codec, deltas, weights = updates(sites)
    c = consortium(sites, config=SecAggConfig(threshold=3), policy=SitePolicy(threshold_rule="majority"))
    srv, total, survivors = c.run(0, encode_all(codec, deltas, weights), drop_before_input={"e"},
                                  drop_before_unmask={"d"})
    assert survivors == ["a", "b", "c", "d"] and srv.threshold == 3 and srv.unmask_targets() == survivors
    check_matches(codec, total, survivors, deltas, weights)


def test_too_many_dropped_abandons_before_any_share_is_revealed(consortium, updates):
    sites = ["a", "b", "c"]
    codec, deltas, weights = updates(sites)
    c = consortium(sites)
    received = []
    with pytest.raises(RoundAbandoned, match="threshold"):
        c.run(0, encode_all(codec, deltas, weights), drop_before_input={"b", "c"}, received=received)
    assert {step for _, step, _ in received} == {"advertise", "share", "input"}  # no unmask step ever ran


def test_too_few_unmask_responses_abandons(consortium, updates):
    sites = ["a", "b", "c"]
    codec, deltas, weights = updates(sites)
    with pytest.raises(RoundAbandoned, match="too few unmask responses"):
        consortium(sites).run(0, encode_all(codec, deltas, weights), drop_before_unmask={"a", "b"})


def test_too_few_consistency_signatures_abandons_before_any_share_is_requested(consortium, updates):
    sites = ["a", "b", "c", "d"]
    codec, deltas, weights = updates(sites)
    received = []
    with pytest.raises(RoundAbandoned, match="only 2 survivors signed the survivor set, t=3"):
        consortium(sites).run(0, encode_all(codec, deltas, weights), drop_before_consistency={"a", "b"},
                              received=received)
    assert "unmask" not in {step for _, step, _ in received}


def test_server_view_is_uniform_and_hides_each_input(consortium, updates):
    """Every vector the server receives looks uniform on Z_2^32 (chi-square on the top byte), even
    for an all-zero input, and a site's vector changes entirely between two runs with the same input."""
    sites = ["a", "b", "c"]
    codec, deltas, weights = updates(sites)
    n = 200_000
    zeros = {s: np.zeros(n, dtype=np.uint32) for s in sites}
    views = []
    for _ in range(2):
        received = []
        c = consortium(sites)
        _, total, _ = c.run(0, zeros, received=received)
        assert not total.any()  # the unmasked sum of zeros is zero: masks cancel exactly
        vectors = {s: MaskedInput.decode(m, "job-1", 0, n).vector for s, step, m in received if step == "input"}
        for v in vectors.values():
            counts = np.bincount(v >> 24, minlength=256)
            assert stats.chisquare(counts).pvalue > 1e-4
        views.append(vectors)
    for s in sites:
        assert np.mean(views[0][s] == views[1][s]) < 1e-3


def test_site_refuses_substituted_or_forged_keys(consortium, updates, tmp_path):
    sites = ["a", "b", "c"]
    c = consortium(sites)
    adverts = {s: cl.advertise(0) for s, cl in c.clients.items()}
    # the server swaps b's mask key for its own: b's signature no longer holds
    ad = AdvertiseKeys.decode(adverts["b"], "job-1", 0)
    forged = AdvertiseKeys(ad.job_id, 0, "b", ad.cipher_pk, bytes(range(32)), ad.self_commitment, ad.certificate,
                           ad.signature).encode()
    with pytest.raises(ProtocolError, match="rejected: bad signature"):
        c.clients["a"].share_keys(0, [adverts["a"], forged, adverts["c"]])
    assert c.clients["a"].rejections[-1]["site"] == "b"  # logged with the site it claims to be
    # a certificate from another CA (e.g. a throwaway CA of the server's own making)
    other = consortium(["b"], job_id="job-1")
    with pytest.raises(ProtocolError, match="not issued by the consortium root"):
        c.clients["c"].share_keys(0, [adverts["a"], other.clients["b"].advertise(0), adverts["c"]])
    # a site's own key left out or altered
    with pytest.raises(ProtocolError, match="own advertisement"):
        c.clients["b"].share_keys(0, [adverts["a"], adverts["c"]])


def test_server_rejects_replayed_and_malformed_inputs_with_reasons(consortium, updates):
    sites = ["a", "b", "c"]
    codec, deltas, weights = updates(sites)
    c = consortium(sites)
    vectors = encode_all(codec, deltas, weights)
    received = []
    c.run(0, vectors, received=received)
    old_input = next(m for s, step, m in received if s == "a" and step == "input")
    srv = c.server(1, codec.length)
    adverts = srv.collect_adverts({s: cl.advertise(1) for s, cl in c.clients.items()})
    inbox = srv.collect_shares({s: cl.share_keys(1, adverts) for s, cl in c.clients.items()})
    short = MaskedInput("job-1", 1, "c", np.zeros(codec.length - 1, np.uint32), ("a", "b")).encode()
    srv.collect_inputs({"a": old_input, "b": c.clients["b"].mask(1, inbox["b"], vectors["b"].copy()), "c": short})
    reasons = {r["site"]: r["reason"] for r in srv.rejections}
    assert "round 0 != expected 1" in reasons["a"] and "length" in reasons["c"]
    assert list(srv.inputs) == ["b"]
    with pytest.raises(RoundAbandoned):
        srv.consistency_request()


def test_client_refuses_unsafe_consistency_and_unmask_requests(consortium, updates):
    sites = ["a", "b", "c"]
    codec, deltas, weights = updates(sites)
    c = consortium(sites, **TWO_OF_THREE)
    srv = c.until_inputs(0, encode_all(codec, deltas, weights))
    a = c.clients["a"]
    good = UnmaskRequest("job-1", 0, ("a", "b", "c"), ()).encode()
    with pytest.raises(ProtocolError, match="before we signed"):  # no unmask without the consistency round
        a.unmask(0, good)
    with pytest.raises(ProtocolError, match="no live key advertisement"):  # ... and that aborted a's round
        a.consistency(0, srv.consistency_request())
    assert a.revealed(0) == {}
    b = c.clients["b"]
    with pytest.raises(ProtocolError, match="only 1 survivors"):
        b.consistency(0, ConsistencyRequest("job-1", 0, ("b",), ("a", "c")).encode())
    cc = c.clients["c"]
    with pytest.raises(ProtocolError, match="round"):
        cc.consistency(0, ConsistencyRequest("job-1", 1, ("a", "b", "c"), ()).encode())
    assert {r["step"] for r in a.rejections + b.rejections + cc.rejections} == {"unmask", "consistency"}


def test_honest_round_reveals_one_share_per_peer_and_records_it(consortium, updates):
    sites = ["a", "b", "c", "d"]
    codec, deltas, weights = updates(sites)
    c = consortium(sites, config=SecAggConfig(threshold=3), policy=SitePolicy(threshold_rule="majority"))
    srv, total, survivors = c.run(0, encode_all(codec, deltas, weights), drop_before_input={"d"})
    check_matches(codec, total, survivors, deltas, weights)
    for s in survivors:
        record = c.clients[s].record(0)
        assert record.participants == tuple(sites) and record.survivors == ("a", "b", "c")
        assert record.dropped == ("d",) and record.signers == ("a", "b", "c") and record.threshold == 3
        assert c.clients[s].revealed(0) == {"a": "self", "b": "self", "c": "self", "d": "key"}
        assert record.revealed_self == ("a", "b", "c") and record.revealed_key == ("d",)
        with pytest.raises(ProtocolError):  # answered once; every secret of the round is gone
            c.clients[s].unmask(0, srv.request.encode())
        with pytest.raises(ProtocolError, match="already used"):  # and the round number never comes back
            c.clients[s].advertise(0)


def test_fresh_keys_every_round_let_a_dropped_site_rejoin(consortium, updates):
    sites = ["a", "b", "c"]
    codec, deltas, weights = updates(sites)
    c = consortium(sites, **TWO_OF_THREE)
    vectors = encode_all(codec, deltas, weights)
    _, _, survivors0 = c.run(0, vectors, drop_before_input={"c"})
    _, total, survivors1 = c.run(1, vectors)
    assert survivors0 == ["a", "b"] and survivors1 == sites
    check_matches(codec, total, survivors1, deltas, weights)

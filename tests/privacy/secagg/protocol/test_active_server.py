"""The server plays against unmodified site code, with the certificates and keys of a consortium
provisioned by ``ai4hi provision`` (NVFlare's own ``nvflare provision``).

Each test is one attack from issue 13: (1) Sybil participants made from the server's and admins'
certificates, (2) different survivor sets told to different sites, (3) a threshold below a site's
floor, (4) an inflated site count to shrink client-level DP noise, (5) one site's out-of-range
input, (6) a corrupted Shamir share. Plus: no sequence of server requests gets both shares of a peer.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai4hi_sdk.privacy.dp.client_level import (noise_share_std, noise_shortfall, privatize_delta,
                                               surviving_noise_multiplier)
from ai4hi_sdk.privacy.secagg.primitives.encoding import decode_share, encode_share
from ai4hi_sdk.privacy.secagg.primitives.shamir import PRIME, Share, combine
from ai4hi_sdk.privacy.secagg.primitives.commit import matches_commitment
from ai4hi_sdk.privacy.secagg.protocol import (ProtocolError, RoundAbandoned, SecAggClient, SecAggConfig,
                                               SitePolicy)
from ai4hi_sdk.privacy.secagg.protocol.identity import CertificateVerifier
from ai4hi_sdk.privacy.secagg.protocol.messages import (AdvertiseKeys, ConsistencyRequest, ConsistencySignature,
                                                        UnmaskRequest, UnmaskResponse)

from ..conftest import LEAD, SERVER
from .conftest import Consortium
from .test_protocol import check_matches, encode_all

H = [f"hospital-{i}" for i in range(1, 6)]
SITE_ADMIN = "it@hospital-2.example.org"


def _rogue(kits, identity, name, job, config):
    """Protocol code run by the server under a certificate it holds (its own or an admin's)."""
    return SecAggClient(name, "job-1", config, sign=identity.sign, certificate=identity.certificate_pem,
                        verify=CertificateVerifier(kits.root_ca, require_site=False).check,
                        participants=[name, *job])


# --------------------------------------------------------------------------- (1) Sybil participants
def test_sybil_view_with_server_and_admin_certificates_is_refused(kits, provisioned):
    job = H[:3]
    c = provisioned(job)
    target = c.clients["hospital-1"]
    own = target.advertise(0)
    fakes = {name: _rogue(kits, ident, name, job, c.config).advertise(0) for name, ident in
             [(SERVER, kits.server_identity()), (LEAD, kits.admin(LEAD)), (SITE_ADMIN, kits.admin(SITE_ADMIN))]}
    # every fake advertisement is validly signed under a certificate of the consortium root CA:
    # what the issue's attack relied on. Only the site-role check tells them apart.
    lax = CertificateVerifier(kits.root_ca, require_site=False)
    for raw in fakes.values():
        assert AdvertiseKeys.decode(raw, "job-1", 0).check_signature(lax.check) is None
    # the issue's view {hospital-1, server, lead}: t would be 2 and both fakes would hold shares
    with pytest.raises(ProtocolError, match="refusing the round") as err:
        target.share_keys(0, [own, fakes[SERVER], fakes[LEAD]])
    assert "'localhost' rejected: not a site of this job" in err.value.reason
    assert f"{LEAD!r} rejected: not a site of this job" in err.value.reason
    logged = {r["site"]: r["reason"] for r in target.rejections}
    assert set(logged) == {SERVER, LEAD} and all(r["step"] == "share_keys" for r in target.rejections)
    with pytest.raises(ProtocolError):  # nothing was shared, so nothing can be masked or revealed
        target.mask(0, {}, np.zeros(4, np.uint32))


def test_certificate_role_refuses_server_and_admins_even_if_the_job_lists_them(kits):
    """Second, independent pin: a site runtime fooled into listing the server's or an admin's name as
    a job site still refuses their certificates, with the reason in its log."""
    job = H[:3]
    names = [SERVER, LEAD, SITE_ADMIN]
    me = kits.site("hospital-1")
    verifier = CertificateVerifier(kits.root_ca, server_names=kits.server_names("hospital-1"))
    target = SecAggClient("hospital-1", "job-1", SecAggConfig(), sign=me.sign, certificate=me.certificate_pem,
                          verify=verifier.check, participants=[*job, *names])
    honest = {s: _rogue(kits, kits.site(s), s, job, SecAggConfig()).advertise(0) for s in job[1:]}
    fakes = {name: _rogue(kits, ident, name, job, SecAggConfig()).advertise(0) for name, ident in
             [(SERVER, kits.server_identity()), (LEAD, kits.admin(LEAD)), (SITE_ADMIN, kits.admin(SITE_ADMIN))]}
    with pytest.raises(ProtocolError, match="refusing the round"):
        target.share_keys(0, [target.advertise(0), *honest.values(), *fakes.values()])
    logged = {r["site"]: r["reason"] for r in target.rejections}
    assert "the server's certificate ('localhost' is the server identity in the site kit)" in logged[SERVER]
    assert "an admin certificate (NVFlare role 'lead')" in logged[LEAD]
    assert "an admin certificate (NVFlare role 'org_admin')" in logged[SITE_ADMIN]
    assert set(logged) == set(names)  # the honest hospitals were not refused


def test_consortium_site_outside_the_job_and_duplicates_are_refused(kits, provisioned):
    c = provisioned(H[:3])
    outsider = _rogue(kits, kits.site("hospital-4"), "hospital-4", H[:3], c.config).advertise(0)
    ads = {s: cl.advertise(0) for s, cl in c.clients.items()}
    with pytest.raises(ProtocolError, match="'hospital-4' rejected: not a site of this job"):
        c.clients["hospital-2"].share_keys(0, [*ads.values(), outsider])
    with pytest.raises(ProtocolError, match="two advertisements for 'hospital-2'"):
        c.clients["hospital-3"].share_keys(0, [*ads.values(), ads["hospital-2"]])


# --------------------------------------------------------------------------- (2) inconsistent survivor sets
def test_inconsistent_survivor_sets_fail_the_consistency_round_and_reveal_nothing(provisioned, updates):
    sites = H[:4]
    codec, deltas, weights = updates(sites)
    c = provisioned(sites)  # t = 3 of 4
    srv = c.until_inputs(0, encode_all(codec, deltas, weights))
    assert sorted(srv.inputs) == sites and srv.threshold == 3
    a = ConsistencyRequest("job-1", 0, tuple(sites), ())  # hospital-1 survived ...
    b = ConsistencyRequest("job-1", 0, tuple(sites[1:]), ("hospital-1",))  # ... no, it dropped
    sig = {s: c.clients[s].consistency(0, a.encode()) for s in sites[:2]}
    sig |= {s: c.clients[s].consistency(0, b.encode()) for s in sites[2:]}
    attempts = []

    def attempt(site, fn):
        try:
            fn()
            attempts.append((site, "ok"))
        except ProtocolError as err:
            attempts.append((site, err.reason))

    mixed = tuple(sig.values())
    # hospital-2 (told A) is shown every signature: two are over B
    attempt("hospital-2", lambda: c.clients["hospital-2"].unmask(0, UnmaskRequest("job-1", 0, a.survivors, a.dropped,
                                                                                  mixed).encode()))
    # hospital-3 (told B) is shown only the two signatures over B: fewer than t
    attempt("hospital-3", lambda: c.clients["hospital-3"].unmask(0, UnmaskRequest(
        "job-1", 0, b.survivors, b.dropped, (sig["hospital-3"], sig["hospital-4"])).encode()))
    # hospital-1 (told A) is asked to sign B as well
    attempt("hospital-1", lambda: c.clients["hospital-1"].consistency(0, b.encode()))
    # hospital-4 (told B) is shown hospital-2's signature (over A) re-labelled as a signature over B
    forged = ConsistencySignature.decode(sig["hospital-2"], "job-1", 0)
    relabelled = ConsistencySignature("job-1", 0, "hospital-2", b.survivors, b.dropped, forged.signature).encode()
    attempt("hospital-4", lambda: c.clients["hospital-4"].unmask(0, UnmaskRequest(
        "job-1", 0, b.survivors, b.dropped, (relabelled, sig["hospital-3"], sig["hospital-4"])).encode()))
    # and then every site again, with whatever the server has
    for s in sites:
        attempt(s, lambda s=s: c.clients[s].unmask(0, UnmaskRequest("job-1", 0, a.survivors, a.dropped,
                                                                     mixed).encode()))
    reasons = dict(attempts[:4])
    assert "the server sent sites different sets" in reasons["hospital-2"]
    assert "only 2 valid consistency signatures, threshold t=3" in reasons["hospital-3"]
    assert "second, different survivor set" in reasons["hospital-1"] and "equivocating" in reasons["hospital-1"]
    assert "consistency signature of 'hospital-2' rejected: bad signature" in reasons["hospital-4"]
    assert all(r != "ok" for _, r in attempts)  # the consistency round failed everywhere ...
    for s in sites:  # ... and no site revealed any share, let alone both shares of a peer
        assert c.clients[s].revealed(0) == {}
        assert any("aborted" in r["reason"] for r in c.clients[s].rejections)


def _lagrange_at_zero(x: int, xs: list[int]) -> int:
    num, den = 1, 1
    for other in xs:
        if other != x:
            num, den = num * -other % PRIME, den * (x - other) % PRIME
    return num * pow(den, -1, PRIME) % PRIME


def _tamper_share(response: bytes, peer: str, kind: str, holders: list[int]) -> bytes:
    """A holder shifts its share so that interpolating the ``holders``' shares at 0 gives the
    secret + 1: still a valid secret encoding, so only a check against what ``peer`` signed can
    tell (plain Shamir reconstruction would silently use it)."""
    msg = UnmaskResponse.decode(response, "job-1", 0)
    shares = dict(msg.self_shares if kind == "self" else msg.key_shares)
    s = decode_share(shares[peer])
    shift = pow(_lagrange_at_zero(s.x, holders), -1, PRIME)
    shares[peer] = encode_share(Share(s.x, (s.y + shift) % PRIME))
    if kind == "self":
        return UnmaskResponse("job-1", 0, msg.site, shares, msg.key_shares).encode()
    return UnmaskResponse("job-1", 0, msg.site, msg.self_shares, shares).encode()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_sequence_of_server_requests_gets_both_shares_of_a_peer(kits, data):
    """The server sends any sequence of consistency and unmask requests (any sets, to one site or to
    all, with the signatures it collected over the same sets or any others); no site ever reveals
    both shares of one peer, and the server never holds t shares of both secrets of any site."""
    sites = H[:4]
    c = Consortium(None, sites, identities={s: kits.site(s) for s in sites}, root=kits.root_ca,
                   server_names=kits.server_names(sites[0]))
    vectors = {s: np.zeros(12, np.uint32) for s in sites}
    dropped_early = data.draw(st.sampled_from([(), ("hospital-4",)]), label="dropped before input")
    srv = c.until_inputs(0, vectors, drop_before_input=dropped_early)
    inputs = tuple(sorted(srv.inputs))
    rest = tuple(sorted(set(sites) - set(inputs)))
    names = st.sampled_from(sites)
    any_sets = st.lists(names, unique=True).flatmap(lambda surv: st.tuples(
        st.just(tuple(sorted(surv))),
        st.lists(names, unique=True).map(lambda d: tuple(sorted(set(d) - set(surv))))))
    proposals = st.one_of(st.just((inputs, rest)),  # the truth
                          st.just((inputs[1:], tuple(sorted((*rest, inputs[0]))))),  # "hospital-1 dropped"
                          st.just((inputs[:-1], tuple(sorted((*rest, inputs[-1]))))),  # "the last one dropped"
                          any_sets)
    pool: list[tuple[tuple, bytes]] = []  # (sets, encoded signature)
    got: dict[tuple[str, str], set[str]] = {}  # (peer, kind) -> holders whose share the server got

    def sign(site, sets):
        try:
            pool.append((sets, c.clients[site].consistency(0, ConsistencyRequest("job-1", 0, *sets).encode())))
        except ProtocolError:
            pass

    def unmask(site, sets, chosen):
        try:
            raw = c.clients[site].unmask(0, UnmaskRequest("job-1", 0, *sets, tuple(chosen)).encode())
        except ProtocolError:
            return
        msg = UnmaskResponse.decode(raw, "job-1", 0)
        for kind, shares in (("self", msg.self_shares), ("key", msg.key_shares)):
            for peer in shares:
                got.setdefault((peer, kind), set()).add(site)

    for _ in range(data.draw(st.integers(1, 10), label="requests")):
        action = data.draw(st.sampled_from(["sign", "sign all", "unmask", "unmask all"]), label="action")
        sets = data.draw(proposals, label="sets")
        if action == "sign":
            sign(data.draw(names, label="to"), sets)
        elif action == "sign all":
            for s in sites:
                sign(s, sets)
        else:
            how = data.draw(st.sampled_from(["matching", "every", "some"]), label="signatures")
            chosen = ([raw for p, raw in pool if p == sets] if how == "matching" else [raw for _, raw in pool]
                      if how == "every" else data.draw(st.lists(st.sampled_from([raw for _, raw in pool] or [b""]),
                                                                unique=True), label="some"))
            for s in (sites if action == "unmask all" else [data.draw(names, label="to")]):
                unmask(s, sets, chosen)
    for s in sites:
        revealed = c.clients[s].revealed(0)
        mine = {(peer, kind) for (peer, kind), holders in got.items() if s in holders}
        assert mine == set(revealed.items())  # the client's record is exactly what left it
        assert len({peer for peer, _ in mine}) == len(mine)  # never two kinds for one peer
    for s in sites:
        assert not (len(got.get((s, "self"), ())) >= srv.threshold and len(got.get((s, "key"), ())) >= srv.threshold)


def test_adaptive_server_cannot_switch_survivor_sets_after_a_reveal(provisioned, updates):
    """The strongest ordering: get every site to sign "hospital-1 survived", collect hospital-1's
    self-mask shares, then claim "hospital-1 dropped" to the same sites to collect its mask-key shares."""
    sites = H[:4]
    codec, deltas, weights = updates(sites)
    c = provisioned(sites)
    c.until_inputs(0, encode_all(codec, deltas, weights))
    a = ("job-1", 0, tuple(sites), ())
    b = ("job-1", 0, tuple(sites[1:]), ("hospital-1",))
    got: dict[str, set[str]] = {"self": set(), "key": set()}

    def collect(raw):
        msg = UnmaskResponse.decode(raw, "job-1", 0)
        got["self"] |= {msg.site for p in msg.self_shares if p == "hospital-1"}
        got["key"] |= {msg.site for p in msg.key_shares if p == "hospital-1"}

    sigs_a = tuple(c.clients[s].consistency(0, ConsistencyRequest(*a).encode()) for s in sites)
    for s in sites[1:3]:  # two holders answer for A: two self-mask shares of hospital-1 (t = 3)
        collect(c.clients[s].unmask(0, UnmaskRequest(*a, sigs_a).encode()))
    sigs_b = []
    for s in sites:  # now everyone is told B
        try:
            sigs_b.append(c.clients[s].consistency(0, ConsistencyRequest(*b).encode()))
        except ProtocolError:
            pass
    for s in sites:
        for sigs in (tuple(sigs_b), sigs_a):
            try:
                collect(c.clients[s].unmask(0, UnmaskRequest(*b, sigs).encode()))
            except ProtocolError:
                pass
    assert sigs_b == [] and got == {"self": {"hospital-2", "hospital-3"}, "key": set()}
    for s in sites:
        assert set(c.clients[s].revealed(0).values()) <= {"self"}


# --------------------------------------------------------------------------- (3) threshold floor
def test_threshold_below_a_sites_floor_is_refused(provisioned):
    sites = H[:4]
    c = provisioned(sites, config=SecAggConfig(threshold=2))  # the job spec asks for t = 2 of 4
    ads = [cl.advertise(0) for cl in c.clients.values()]
    for s in sites:
        with pytest.raises(ProtocolError, match=r"threshold t=2 is below this site's floor 3 .* ask for threshold >= 3"):
            c.clients[s].share_keys(0, ads)
    # a site's own floor above the job's default t (3 of 4) refuses too, the others go on
    strict = {s: SitePolicy(threshold_floor=4) if s == "hospital-2" else SitePolicy() for s in sites}
    c = provisioned(sites, policy=strict)
    ads = [cl.advertise(0) for cl in c.clients.values()]
    with pytest.raises(ProtocolError, match="below this site's floor 4"):
        c.clients["hospital-2"].share_keys(0, ads)
    assert c.clients["hospital-1"].share_keys(0, ads)
    # and the minimum cohort
    c = provisioned(H[:3], policy=SitePolicy(min_sites=4))
    ads = [cl.advertise(0) for cl in c.clients.values()]
    with pytest.raises(ProtocolError, match=r"only 3 verified participants; .*min_secure_aggregation_sites\) is 4"):
        c.clients["hospital-1"].share_keys(0, ads)


# --------------------------------------------------------------------------- (4) inflated site count
def test_inflated_site_count_from_the_server_does_not_change_any_sites_noise(kits, provisioned):
    sigma, clip = 1.0, 0.5
    job = H[:3]
    c = provisioned(job)
    ads = {s: cl.advertise(0) for s, cl in c.clients.items()}
    # the server tries to inflate the cohort every site sees: Sybils and consortium sites outside the job
    extra = [_rogue(kits, kits.server_identity(), SERVER, job, c.config).advertise(0),
             _rogue(kits, kits.admin(LEAD), LEAD, job, c.config).advertise(0),
             *(_rogue(kits, kits.site(s), s, job, c.config).advertise(0) for s in H[3:])]
    for s in job:
        with pytest.raises(ProtocolError, match="refusing the round"):
            c.clients[s].share_keys(0, [*ads.values(), *extra])
    # next round, honestly relayed: each site sizes its noise from the cohort it verified itself
    for s in job:
        ads[s] = c.clients[s].advertise(1)
    for s in job:
        c.clients[s].share_keys(1, list(ads.values()))
        claimed_by_server = 10_000  # what the task meta said; no argument takes it
        verified = c.clients[s].participants(1)
        assert verified == tuple(job)
        assert noise_share_std(sigma, clip, verified) == sigma * clip / math.sqrt(3)
        noised, _ = privatize_delta({"w": torch.zeros(200_000)}, clip, sigma, verified)
        measured = noised["w"].std().item()
        assert measured == pytest.approx(sigma * clip / math.sqrt(3), rel=0.02)
        assert measured > 50 * sigma * clip / math.sqrt(claimed_by_server)
        with pytest.raises(TypeError, match="not int"):
            noise_share_std(sigma, clip, claimed_by_server)


def test_dropouts_that_leave_too_little_noise_abandon_before_unmasking(provisioned, updates):
    sites = H[:4]
    codec, deltas, weights = updates(sites)
    sigma = 1.0
    left = surviving_noise_multiplier(sigma, sites, sites[:3])
    assert left == pytest.approx(sigma * math.sqrt(3 / 4))
    check = lambda p, s: noise_shortfall(p, s, noise_multiplier=sigma, min_noise_multiplier=0.9)  # noqa: E731
    c = provisioned(sites, reveal_check=check)
    with pytest.raises(RoundAbandoned, match="too few unmask responses"):
        c.run(0, encode_all(codec, deltas, weights), drop_before_input={"hospital-4"})
    for s in sites[:3]:
        assert c.clients[s].revealed(0) == {}
        assert "noise multiplier 0.866 < the site's minimum 0.9" in c.clients[s].rejections[-1]["reason"]
    # a minimum the survivors still meet: the round completes and each site can book what was left
    check = lambda p, s: noise_shortfall(p, s, noise_multiplier=sigma, min_noise_multiplier=0.8)  # noqa: E731
    c = provisioned(sites, reveal_check=check)
    _, total, survivors = c.run(0, encode_all(codec, deltas, weights), drop_before_input={"hospital-4"})
    check_matches(codec, total, survivors, deltas, weights)
    record = c.clients["hospital-1"].record(0)
    assert surviving_noise_multiplier(sigma, record.participants, record.survivors) == pytest.approx(left)


# --------------------------------------------------------------------------- (5) out-of-range input
def _malicious_vector(codec, delta, weight, *, mean=None, weight_word=None):
    """A site that bypasses clipping: levels that alone move the weighted mean to ``mean``."""
    vec = codec.encode(delta, weight, {"train_loss": 1.0})
    parts = codec.layout.split(vec)
    if mean is not None:
        level = int(round(mean * codec.delta_config.scale))  # sum of all weights = max_weight here
        assert level < 2**31 - 10**8  # no wrap-around: the sum really decodes to ~mean
        parts["delta"][:] = np.array(level, dtype=np.int64).astype(np.uint32)
    if weight_word is not None:
        parts["weight"][:] = np.uint32(weight_word)
    return vec


@pytest.mark.parametrize("attack", ["mean", "weight_wraps", "weight_too_large"])
def test_one_sites_out_of_range_input_makes_the_server_abandon(provisioned, updates, attack):
    sites = H[:3]
    codec, deltas, _ = updates(sites)
    weights = {"hospital-1": 300, "hospital-2": 300, "hospital-3": 400}  # total = max_weight = 1000
    vectors = encode_all(codec, deltas, weights)
    zero = {k: np.zeros_like(v) for k, v in deltas["hospital-2"].items()}
    kw = {"mean": dict(mean=3.0), "weight_wraps": dict(weight_word=2**32 - 2000),
          "weight_too_large": dict(weight_word=5 * codec.max_weight)}[attack]
    vectors["hospital-2"] = _malicious_vector(codec, zero, weights["hospital-2"], **kw)
    c = provisioned(sites)
    srv, total, survivors = c.run(0, vectors)  # the unmodified clients mask whatever they are given
    if attack == "mean":  # without the check the mean would have moved far outside the clip range
        decoded = codec.decode(total, 3)
        assert np.abs(decoded.mean_delta["fc.bias"]).min() > 2.9
    with pytest.raises(RoundAbandoned, match="unmasked sum rejected"):
        srv.decode(codec)
    # the same round with honest inputs decodes
    _, total, _ = provisioned(sites).run(0, encode_all(codec, deltas, weights))
    check_matches(codec, total, sites, deltas, weights)


# --------------------------------------------------------------------------- (6) corrupted shares
def test_corrupt_self_share_is_identified_and_left_out_with_more_than_t_shares(provisioned, updates):
    sites = H[:4]  # t = 3, four holders of each self-mask secret
    codec, deltas, weights = updates(sites)
    tamper = lambda s, r: _tamper_share(r, "hospital-1", "self", [1, 2, 3, 4]) if s == "hospital-4" else r  # noqa
    srv, total, survivors = provisioned(sites).run(0, encode_all(codec, deltas, weights), tamper=tamper)
    check_matches(codec, total, survivors, deltas, weights)
    assert srv.rejections == [{"round": 0, "site": "hospital-4", "step": "unmask",
                               "reason": "corrupt share of the self-mask secret of hospital-1: left out"}]


def test_corrupt_self_share_with_exactly_t_shares_abandons(provisioned, updates):
    sites = H[:3]  # t = 3 = every holder
    codec, deltas, weights = updates(sites)
    seen = {}

    def tamper(site, response):
        seen[site] = response
        return _tamper_share(response, "hospital-1", "self", [1, 2, 3]) if site == "hospital-3" else response

    with pytest.raises(RoundAbandoned, match="self-mask secret of hospital-1 cannot be rebuilt from 3 shares"):
        provisioned(sites).run(0, encode_all(codec, deltas, weights), tamper=tamper)
    # what plain reconstruction would have used: a valid, different secret -- a silently wrong sum
    good = [decode_share(UnmaskResponse.decode(seen[s], "job-1", 0).self_shares["hospital-1"]) for s in sites]
    bad = good[:2] + [decode_share(UnmaskResponse.decode(tamper("hospital-3", seen["hospital-3"]), "job-1", 0)
                                   .self_shares["hospital-1"])]
    assert int.from_bytes(combine(bad, 3), "big") == int.from_bytes(combine(good, 3), "big") + 1


@pytest.mark.parametrize("threshold,outcome", [(3, "left out"), (4, "abandoned")])
def test_corrupt_mask_key_share_of_a_dropped_site(provisioned, updates, threshold, outcome):
    sites = H[:5]  # hospital-5 drops after sharing: its mask key is rebuilt from 4 holders
    codec, deltas, weights = updates(sites)
    c = provisioned(sites, config=SecAggConfig(threshold=threshold), policy=SitePolicy(threshold_rule="majority"))
    tamper = lambda s, r: _tamper_share(r, "hospital-5", "key", [1, 2, 3, 4]) if s == "hospital-4" else r  # noqa
    if outcome == "abandoned":
        with pytest.raises(RoundAbandoned, match="mask key of hospital-5 cannot be rebuilt from 4 shares"):
            c.run(0, encode_all(codec, deltas, weights), drop_before_input={"hospital-5"}, tamper=tamper)
        return
    srv, total, survivors = c.run(0, encode_all(codec, deltas, weights), drop_before_input={"hospital-5"},
                                  tamper=tamper)
    assert survivors == H[:4]
    check_matches(codec, total, survivors, deltas, weights)
    assert [r["reason"] for r in srv.rejections] == ["corrupt share of the mask key of hospital-5: left out"]


def test_commitment_is_what_catches_a_wrong_self_secret(provisioned):
    c = provisioned(H[:3])
    ad = AdvertiseKeys.decode(c.clients["hospital-1"].advertise(0), "job-1", 0)
    secret = c.clients["hospital-1"]._rounds[0].self_secret
    assert matches_commitment(secret, ad.self_commitment, job_id="job-1", round_index=0, site="hospital-1")
    wrong = bytes([secret[0] ^ 1]) + secret[1:]
    assert not matches_commitment(wrong, ad.self_commitment, job_id="job-1", round_index=0, site="hospital-1")

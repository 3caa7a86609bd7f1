"""The secure-aggregation glue, server driver against real site runtimes in one process (no NVFlare
transport; the simulator tests are in test_secagg_e2e.py): a round matches plain FedAvg within its
bound, the server rejects what is not a masked delta of this round (non-delta, wrong round,
duplicate) with a logged reason, and every site decides from its own kit and policy -- participants
pinned to its consortium list whatever the server claims, threshold floor and cohort from its
policy, client-level DP noise from the participants it verified."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from ai4hi_sdk.jobs.wire import (CONSISTENCY_TASK, NUM_SITES_KEY, SECAGG_META, SECAGG_SITES, SHARES_TASK,
                                 TRAIN_TASK, UNMASK_TASK)
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.privacy.secagg.protocol import RoundAbandoned
from ai4hi_sdk.privacy.secagg.protocol.messages import ConsistencyRequest
from ai4hi_sdk.site_paths import CONSORTIUM_LIST
from tests.jobs.secagg_federation import SITES, Federation, job_spec, plain_deltas

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _ledger(fed, site):
    return PrivacyLedger(fed.workspace(site) / PRIVACY_LEDGER).records()


def _reasons(records, site=None):
    return " | ".join(r.reason for r in records if site is None or r.site == site)


def test_secure_round_equals_plain_fedavg_within_its_bound(tmp_path, capsys):
    fed = Federation(tmp_path / "secure", job_spec())
    (outcome,) = fed.run()
    reference = plain_deltas(tmp_path / "plain")
    total = sum(w for _, w in reference.values())
    assert outcome.total_weight == total and outcome.survivors == list(SITES) and outcome.threshold == 3
    assert fed.server.rejections == [] and fed.server.refused == []
    worst = 0.0
    for name, mean in outcome.mean_delta.items():
        plain = sum(w * d[name].double() for d, w in reference.values()) / total
        worst = max(worst, float((mean.double() - plain).abs().max()))
    assert 0 < outcome.error_bound < 1e-5 and worst <= outcome.error_bound
    assert max(float(v.abs().max()) for v in outcome.mean_delta.values()) > 1000 * outcome.error_bound
    # every step of the round went through the consistency check before anything was unmasked
    tasks = [t for t, _ in fed.sent]
    assert tasks.index(CONSISTENCY_TASK) > tasks.index(TRAIN_TASK) and tasks.index(UNMASK_TASK) > tasks.index(
        CONSISTENCY_TASK)
    log = capsys.readouterr().out
    for site in SITES:  # each site logs the participants it accepted and what it revealed
        assert f"[ai4hi] {site}: secure aggregation: round 0: accepted participants hospital-1, hospital-2, " \
               f"hospital-3 (t = 3)" in log
        assert f"[ai4hi] {site}: secure aggregation: round 0: signed survivors hospital-1, hospital-2, hospital-3" in log


@pytest.mark.parametrize("tamper, reason", [
    ("not_a_delta", "expected a masked model delta (DIFF)"),
    ("wrong_round", "result is for round 7, current round is 0"),
    ("duplicate", "2 messages from the same site in one step (duplicate)"),
])
def test_server_rejects_what_is_not_a_masked_delta_of_this_round(tmp_path, tamper, reason):
    """hospital-2's training result reaches the server as a full model, for another round, or twice:
    it is rejected with the reason, and (t = 3 of 3) the round is abandoned before any unmasking."""
    fed = Federation(tmp_path, job_spec())

    def on_result(task, site, result):
        if task != TRAIN_TASK or site != "hospital-2":
            return [result]
        if tamper == "not_a_delta":
            result.params_type = "FULL"
        elif tamper == "wrong_round":
            result.current_round = 7
        else:
            return [result, result]
        return [result]

    fed.on_result = on_result
    with pytest.raises(RoundAbandoned, match="2 of 3 sites sent masked inputs"):
        fed.run()
    assert [(r.site, r.step, r.round) for r in fed.server.rejections] == [("hospital-2", "input", 0)]
    assert reason in fed.server.rejections[0].reason
    assert any(reason in msg for level, msg in fed.logs if level == "warning")
    assert not [t for t, _ in fed.sent if t in (CONSISTENCY_TASK, UNMASK_TASK)]


def test_an_inflated_site_count_changes_no_sites_noise_or_payload(tmp_path, capsys):
    """The server claims 10,000 sites (9,997 of them outside the consortium) in every task: each site
    keeps the 3 its kit lists, sizes its noise share and its payload for them and books that."""
    sigma, clip = 1.0, 0.5
    fed = Federation(tmp_path, job_spec(privacy={"client_dp": {"clip": clip, "noise_multiplier": sigma}}))
    ghosts = [f"ghost-{i}" for i in range(9_997)]

    def on_send(task, site, data):
        data.meta = {**data.meta, NUM_SITES_KEY: 10_000}
        data.meta[SECAGG_META] = {**data.meta[SECAGG_META], "n_sites": 10_000,
                                  SECAGG_SITES: [*data.meta[SECAGG_META][SECAGG_SITES], *ghosts]}
        return data

    fed.on_send = on_send
    outcomes = fed.run(rounds=2)  # round 1's keys and shares ride on round 0's train and unmask
    assert [o.survivors for o in outcomes] == [list(SITES)] * 2 and fed.server.rejections == []
    log = capsys.readouterr().out
    for site, runtime in fed.runtimes.items():
        assert runtime._secure.allowed == SITES and runtime._secure.codec().n_sites == 3
        assert f"{site}: secure aggregation: the server names 9997 job site(s) outside this site's consortium list" in log
        spent = [r for r in _ledger(fed, site) if r["status"] == "spent"]
        assert [r["round"] for r in spent] == [0, 1]
        for record in spent:
            booked = record["client_dp"]
            assert booked["participants"] == 3 and booked["participant_names"] == list(SITES)
            assert booked["survivors_min"] == 3 and booked["effective_noise_multiplier"] == pytest.approx(sigma)
            assert record["mechanism"] == "client_dp" and record["noise_multiplier"] == pytest.approx(sigma)


def test_the_noise_share_follows_the_verified_names(tmp_path, monkeypatch):
    """What the runtime adds: it passes the verified names to the noise share (never a count)."""
    from ai4hi_sdk.privacy.dp import client_level

    seen = []
    original = client_level.privatize_delta

    def spy(delta, clip, sigma, n_sites, generator=None):
        seen.append(n_sites)
        return original(delta, clip, sigma, n_sites, generator)

    monkeypatch.setattr(client_level, "privatize_delta", spy)
    fed = Federation(tmp_path, job_spec(privacy={"client_dp": {"clip": 0.5, "noise_multiplier": 1.0}}))
    fed.run()
    assert seen == [SITES] * 3
    assert client_level.noise_share_std(1.0, 0.5, seen[0]) == pytest.approx(0.5 / math.sqrt(3))


def test_a_site_refuses_without_its_consortium_list_and_outside_the_claimed_job(tmp_path):
    fed = Federation(tmp_path, job_spec(), sites=(*SITES, "hospital-4"))
    (fed.workspace("hospital-1") / CONSORTIUM_LIST).unlink()

    def on_send(task, site, data):  # the server leaves hospital-4 out of the job it tells hospital-4
        if site == "hospital-4":
            data.meta = {**data.meta, SECAGG_META: {**data.meta[SECAGG_META], SECAGG_SITES: list(SITES)}}
        return data

    fed.on_send = on_send
    with pytest.raises(RoundAbandoned):  # 2 sites left: too few to exchange keys
        fed.run()
    reasons = {r.site: r.reason for r in fed.server.refused}
    assert "no consortium site list at <site workspace>/ai4hi/consortium.json" in reasons["hospital-1"]
    assert "does not name this site among the job's sites" in reasons["hospital-4"]


def test_the_server_cannot_change_the_site_list_during_a_job(tmp_path):
    fed = Federation(tmp_path, job_spec())

    def on_send(task, site, data):
        if task == SHARES_TASK and site == "hospital-3":
            data.meta = {**data.meta, SECAGG_META: {**data.meta[SECAGG_META], SECAGG_SITES: list(SITES[:2]) + [site]
                                                    + ["hospital-9"]}}
        return data

    fed.on_send = on_send
    assert fed.server.setup(list(SITES)) == ["hospital-1", "hospital-2"]  # hospital-3 sent no shares
    assert "changed the job's site list" in _reasons(fed.server.refused, "hospital-3")


def test_a_threshold_below_a_sites_floor_is_refused_with_the_reason(tmp_path):
    fed = Federation(tmp_path, job_spec(secure={"threshold": 2}))
    assert fed.server.setup(list(SITES)) == []  # no site sends shares
    assert {r.site for r in fed.server.refused} == set(SITES)
    assert all("threshold t=2 is below this site's floor 3 for a neighbourhood of 3" in r.reason
               for r in fed.server.refused)


def test_the_majority_rule_lets_three_sites_survive_one_dropout_and_the_floor_still_holds(tmp_path):
    majority = {"secure_aggregation_threshold_rule": "majority"}
    fed = Federation(tmp_path / "a", job_spec(secure={"threshold": 2}), policy=majority)
    fed.on_send = lambda task, site, data: None if (task, site) == (TRAIN_TASK, "hospital-2") else data
    (outcome,) = fed.run()
    assert outcome.threshold == 2 and outcome.survivors == ["hospital-1", "hospital-3"]
    assert outcome.dropped == ["hospital-2"]
    # one site keeps a floor of 3: it refuses, whatever the others allow
    strict = Federation(tmp_path / "b", job_spec(secure={"threshold": 2}), policy=majority,
                        site_policy={"hospital-3": {"min_secure_aggregation_threshold": 3}})
    strict.server.setup(list(SITES))
    assert [r.site for r in strict.server.refused] == ["hospital-3"]
    assert "below this site's floor 3" in strict.server.refused[0].reason


def test_the_sites_minimum_cohort_comes_from_its_policy(tmp_path):
    fed = Federation(tmp_path, job_spec(), site_policy={"hospital-1": {"min_secure_aggregation_sites": 4}})
    fed.server.setup(list(SITES))
    assert [r.site for r in fed.server.refused] == ["hospital-1"]
    assert "minimum cohort (min_secure_aggregation_sites) is 4" in fed.server.refused[0].reason


def test_a_site_asked_to_sign_two_survivor_sets_refuses_and_reveals_nothing(tmp_path):
    """The server first tells hospital-1 that hospital-2 dropped (hospital-1 signs that), then sends
    it the real survivor set: hospital-1 refuses with the reason, forgets the round and is not asked
    to unmask; the others (t = 2 under the majority rule) finish the round without it."""
    fed = Federation(tmp_path, job_spec(secure={"threshold": 2}),
                     policy={"secure_aggregation_threshold_rule": "majority"})
    first = []

    def on_send(task, site, data):
        if task == CONSISTENCY_TASK and site == "hospital-1":
            other = ConsistencyRequest(fed.job_id, 0, ("hospital-1", "hospital-3"), ("hospital-2",)).encode()
            first.append(fed._answer(task, site, _with_request(data, other)))
        return data

    fed.on_send = on_send
    (outcome,) = fed.run()
    assert first and "ai4hi_refused" not in first[0].meta  # it did sign the first set
    assert "the server is equivocating" in _reasons(fed.server.refused, "hospital-1")
    assert (UNMASK_TASK, "hospital-1") not in fed.sent
    client = fed.runtimes["hospital-1"]._secure.client
    assert client.revealed(0) == {} and 0 not in client._rounds  # the round's secrets are gone
    assert outcome.survivors == list(SITES)  # hospital-1's input is in the sum; its secrets never left it whole


def _with_request(data, request):
    out = copy.copy(data)
    out.meta = {**data.meta, SECAGG_META: {**data.meta[SECAGG_META], "request": request}}
    return out


def test_reveal_check_stops_the_unmask_when_dropouts_leave_too_little_client_noise(tmp_path):
    """With client-level DP as the site's protection the unmask needs the site's minimum noise from
    the survivors' shares; with DP-SGD (the patient-level guarantee) there is no such check."""
    cdp = {"client_dp": {"clip": 0.5, "noise_multiplier": 1.0}}
    fed = Federation(tmp_path, job_spec(privacy=cdp), policy={"min_noise_multiplier": 0.7})
    check = fed.runtimes["hospital-1"]._reveal_check()
    assert check(SITES, SITES) is None and check(SITES, SITES[:2]) is None  # sqrt(2/3) = 0.82 >= 0.7
    assert "only 1 of 3 sites survived: the sum carries noise multiplier 0.5774 < the site's minimum 0.7" in \
        check(SITES, SITES[:1])
    dp = Federation(tmp_path / "dp", job_spec(privacy={**cdp, "dp_sgd": {"noise_multiplier": 1.0,
                                                                         "max_grad_norm": 1.0}}))
    assert dp.runtimes["hospital-1"]._reveal_check() is None


def test_an_out_of_range_input_abandons_the_round_after_unmasking_the_sum_only(tmp_path):
    """hospital-2 adds 2**30 levels (twice the clip range) to its masked vector: the masks still
    cancel, the unmasked sum is impossible for in-range inputs and the round is abandoned; the
    server learns that, not whose input it was."""
    fed = Federation(tmp_path, job_spec())

    def on_result(task, site, result):
        if task == TRAIN_TASK and site == "hospital-2":
            vector = np.array(result.params["secagg_masked"], dtype=np.uint32)
            vector[: vector.size - 1 - len(fed.server.codec.metric_names) * 2] += np.uint32(2**30)
            result.params = {**result.params, "secagg_masked": vector}
        return [result]

    fed.on_result = on_result
    with pytest.raises(RoundAbandoned, match=r"unmasked sum rejected \(out of the public bounds.*outside the clip "
                                             r"range \+-1"):
        fed.run()
    assert fed.server.rejections == []  # nothing points at hospital-2: only the sum was ever seen

"""The pure egress rules, one per kind of result (the guard's NVFlare adapter is tested separately)."""

import pytest

from ai4hi_sdk.site.egress_rules import egress_violation


def _rec(task="train", tensors=(("w", "float32", [3]),), metrics=(), round_index=0, sha="s"):
    return {"task": task, "job_id": "j", "round": round_index, "payload_kind": "WEIGHT_DIFF" if tensors else "METRICS",
            "tensors": [{"name": n, "dtype": d, "shape": s} for n, d, s in tensors], "metric_names": list(metrics),
            "sha256": sha}


def _lookup(found=None):
    return lambda job, rnd, sha: found if (job, rnd, sha) == ("j", 0, "s") else None


def test_training_payload_needs_its_commitment():
    rule = dict(refused=False, require_dp=False, require_secure_aggregation=False)
    assert egress_violation(_rec(), lookup=_lookup({"type": "egress", "status": "committed"}), **rule) is None
    assert "no ledger commitment" in egress_violation(_rec(sha="other"), lookup=_lookup({}), **rule)
    assert "no privacy ledger" in egress_violation(_rec(), lookup=None, **rule)
    assert "without a model update" in egress_violation(_rec(tensors=()), lookup=_lookup({}), **rule)


def test_dp_requirement_needs_a_spent_dp_round():
    rule = dict(refused=False, require_dp=True, require_secure_aggregation=False)
    assert egress_violation(_rec(), lookup=_lookup({"type": "dp_round", "status": "spent"}), **rule) is None
    assert egress_violation(_rec(), lookup=_lookup({"type": "egress", "status": "committed"}), **rule)
    assert egress_violation(_rec(), lookup=_lookup({"type": "dp_round", "status": "refused"}), **rule)


HEADER = ("secagg_masked_header", "uint8", [60])


def test_secure_aggregation_requirement_admits_only_the_masked_form():
    rule = dict(refused=False, require_dp=False, require_secure_aggregation=True)
    spent = _lookup({"type": "egress", "status": "committed"})
    masked = _rec(tensors=(("secagg_masked", "uint32", [9]), HEADER, ("secagg_advertise", "uint8", [40])))
    assert egress_violation(masked, lookup=spent, **rule) is None
    assert egress_violation(_rec(tensors=(("secagg_masked", "uint32", [9]), HEADER)), lookup=spent, **rule) is None
    # the vector without its header, or the header without the vector
    assert "its header" in egress_violation(_rec(tensors=(("secagg_masked", "uint32", [9]),)), lookup=spent, **rule)
    assert egress_violation(_rec(tensors=(HEADER,)), lookup=spent, **rule)
    assert egress_violation(_rec(tensors=(("secagg_masked", "float32", [9]), HEADER)), lookup=spent, **rule)
    assert egress_violation(_rec(tensors=(("secagg_masked", "uint32", [3, 3]), HEADER)), lookup=spent, **rule)
    assert egress_violation(_rec(tensors=(("secagg_masked", "uint32", [9]), ("secagg_masked_header", "uint32", [9]))),
                            lookup=spent, **rule)
    for extra in (("w", "float32", [3]), ("secagg_consistency", "uint8", [9]), ("secagg_unmask", "uint8", [9])):
        assert egress_violation(_rec(tensors=(("secagg_masked", "uint32", [9]), HEADER, extra)), lookup=spent, **rule)


@pytest.mark.parametrize("task, allowed", [
    ("ai4hi_secagg_keys", {"secagg_advertise"}),
    ("ai4hi_secagg_shares", {"secagg_shares"}),
    ("ai4hi_secagg_consistency", {"secagg_consistency"}),
    ("ai4hi_secagg_unmask", {"secagg_unmask", "secagg_shares"}),
])
def test_each_protocol_step_sends_only_its_own_byte_strings(task, allowed):
    rule = dict(refused=False, require_dp=True, require_secure_aggregation=True, lookup=None)
    every = {"secagg_advertise", "secagg_shares", "secagg_masked", "secagg_masked_header", "secagg_consistency",
             "secagg_unmask", "w"}
    assert egress_violation(_rec(task=task, tensors=tuple((n, "uint8", [32]) for n in sorted(allowed))), **rule) is None
    for name in sorted(every - allowed):
        assert egress_violation(_rec(task=task, tensors=((name, "uint8", [32]),)), **rule), (task, name)
    name = sorted(allowed)[0]
    assert egress_violation(_rec(task=task, tensors=((name, "uint32", [8]),)), **rule)
    assert egress_violation(_rec(task=task, tensors=((name, "uint8", [4, 8]),)), **rule)
    assert egress_violation(_rec(task=task, tensors=((name, "uint8", [32]),), metrics=("train_loss",)), **rule)


def test_protocol_and_metric_tasks_and_refusals():
    rule = dict(require_dp=True, require_secure_aggregation=True, lookup=None)
    proto = _rec(task="ai4hi_secagg_keys", tensors=(("secagg_advertise", "uint8", [40]),))
    assert egress_violation(proto, refused=False, **rule) is None
    assert egress_violation(_rec(task="ai4hi_secagg_keys", tensors=(("x", "uint8", [4]),)), refused=False, **rule)
    assert egress_violation(_rec(task="ai4hi_secagg_keys", tensors=(), metrics=("m",)), refused=False, **rule)
    assert egress_violation(_rec(task="validate", tensors=(), metrics=("val_auroc",)), refused=False, **rule) is None
    assert egress_violation(_rec(task="validate"), refused=False, **rule)
    assert egress_violation(_rec(task="x", tensors=()), refused=False, **rule)
    assert egress_violation(_rec(tensors=()), refused=True, **rule) is None
    assert egress_violation(_rec(), refused=True, **rule)

"""The site's egress guard (a real NVFlare filter over a real site workspace): it logs every result
once, lets a training payload out only if the ledger holds its commitment, and replaces anything the
site's rules forbid with a refusal, logging both."""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace

from ai4hi_sdk.audit.hash_chain import read_entries
from ai4hi_sdk.jobs.wire import MASKED, MASKED_HEADER, REFUSED_KEY, ROUND_KEY
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.privacy.egress import describe_payload
from ai4hi_sdk.site.egress_guard import EGRESS_LOG, Ai4hiEgressGuard
from tests.site.conftest import write_policy

JOB = "job-7"


class _Engine:  # the one engine method the filter uses, over NVFlare's real Workspace
    def __init__(self, root):
        (root / "startup").mkdir(exist_ok=True)  # what a site kit has
        (root / "local").mkdir(exist_ok=True)
        self.workspace = Workspace(str(root), "hospital-1")

    def get_workspace(self):
        return self.workspace


def _ctx(root, task="train") -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, _Engine(root), private=True, sticky=False)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "hospital-1", private=False, sticky=False)
    ctx.set_prop(FLContextKey.TASK_NAME, task, private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, JOB, private=False, sticky=False)
    return ctx


def _delta(value=1.0, kind=DataKind.WEIGHT_DIFF, metrics=None, round_index=0):
    data = {"w": np.full(3, value, np.float32)}
    meta = {ROUND_KEY: round_index}
    if metrics is not None:
        meta["initial_metrics"] = metrics
    return DXO(kind, data=data, meta=meta).to_shareable(), data, metrics or {}


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.delenv("AI4HI_SITE_WORKSPACE_ROOT", raising=False)
    write_policy(tmp_path, require_dp=False)
    return tmp_path


def _log(ws):
    return [e["record"] for e in read_entries(ws / EGRESS_LOG)]


def _commit(ws, data, metrics, round_index=0):
    PrivacyLedger(ws / PRIVACY_LEDGER).record_egress(job_id=JOB, round_index=round_index,
                                                     egress=describe_payload(data, metrics))


def test_committed_payload_leaves_once_even_when_installed_twice(ws):
    shareable, data, metrics = _delta(metrics={"dp_epsilon": 1.0})
    _commit(ws, data, metrics)
    ctx = _ctx(ws)
    out = Ai4hiEgressGuard().process(Ai4hiEgressGuard().process(shareable, ctx), ctx)
    assert from_shareable(out).data_kind == DataKind.WEIGHT_DIFF
    (record,) = _log(ws)
    assert record["sha256"] == describe_payload(data, metrics)["sha256"] and "blocked" not in record


def test_uncommitted_training_payload_is_replaced_by_a_refusal(ws):
    shareable, data, _ = _delta()
    _commit(ws, data, {}, round_index=1)  # a commitment, but for another round
    out = Ai4hiEgressGuard().process(shareable, _ctx(ws))
    dxo = from_shareable(out)
    assert dxo.data_kind == DataKind.METRICS and dxo.data == {}
    assert dxo.meta[REFUSED_KEY].startswith("egress guard: no ledger commitment")
    blocked, sent = _log(ws)
    assert blocked["blocked"] and blocked["tensors"] and sent["refusal"] and sent["tensors"] == []


def test_where_dp_is_required_only_a_dp_spend_commitment_lets_a_payload_out(ws):
    write_policy(ws, require_dp=True)
    shareable, data, _ = _delta()
    _commit(ws, data, {})  # committed, but not as a DP-SGD spend
    out = Ai4hiEgressGuard().process(shareable, _ctx(ws))
    assert "requires DP-SGD" in from_shareable(out).meta[REFUSED_KEY]


def test_where_secure_aggregation_is_required_a_float_delta_never_leaves(ws):
    write_policy(ws, require_dp=False, require_secure_aggregation=True)
    shareable, data, _ = _delta()
    _commit(ws, data, {})
    out = Ai4hiEgressGuard().process(shareable, _ctx(ws))
    assert "only a masked vector" in from_shareable(out).meta[REFUSED_KEY]
    bare = {MASKED: np.arange(5, dtype=np.uint32)}  # the masked vector without its header
    _commit(ws, bare, {})
    out = Ai4hiEgressGuard().process(DXO(DataKind.WEIGHT_DIFF, data=bare, meta={ROUND_KEY: 0}).to_shareable(), _ctx(ws))
    assert "its header" in from_shareable(out).meta[REFUSED_KEY]
    masked = {MASKED: np.arange(5, dtype=np.uint32), MASKED_HEADER: np.arange(7, dtype=np.uint8)}
    _commit(ws, masked, {})
    ok = DXO(DataKind.WEIGHT_DIFF, data=masked, meta={ROUND_KEY: 0}).to_shareable()
    assert from_shareable(Ai4hiEgressGuard().process(ok, _ctx(ws))).data_kind == DataKind.WEIGHT_DIFF


def test_a_refusal_carries_nothing_else_and_metrics_tasks_carry_no_tensors(ws):
    bad_refusal = DXO(DataKind.METRICS, data={"val_auroc": 0.9}, meta={REFUSED_KEY: "no"}).to_shareable()
    out = Ai4hiEgressGuard().process(bad_refusal, _ctx(ws))
    assert from_shareable(out).data == {} and "only its reason" in from_shareable(out).meta[REFUSED_KEY]
    tensors_in_validation = DXO(DataKind.WEIGHTS, data={"w": np.ones(2, np.float32)}).to_shareable()
    out = Ai4hiEgressGuard().process(tensors_in_validation, _ctx(ws, task="validate"))
    assert "only aggregate metrics" in from_shareable(out).meta[REFUSED_KEY]
    unknown = DXO(DataKind.METRICS, data={"x": 1.0}).to_shareable()
    out = Ai4hiEgressGuard().process(unknown, _ctx(ws, task="steal"))
    assert "unknown task" in from_shareable(out).meta[REFUSED_KEY]


def test_without_a_valid_policy_only_refusals_leave(tmp_path, monkeypatch):
    monkeypatch.delenv("AI4HI_SITE_WORKSPACE_ROOT", raising=False)
    shareable, _, _ = _delta()
    out = Ai4hiEgressGuard().process(shareable, _ctx(tmp_path, task="validate"))
    assert "no valid privacy policy" in from_shareable(out).meta[REFUSED_KEY]
    refusal = DXO(DataKind.METRICS, data={}, meta={REFUSED_KEY: "policy"}).to_shareable()
    assert from_shareable(Ai4hiEgressGuard().process(refusal, _ctx(tmp_path))).meta[REFUSED_KEY] == "policy"

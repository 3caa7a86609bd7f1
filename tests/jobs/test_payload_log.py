"""The egress log filter logs a payload once even when installed twice (site privacy.json + job),
and again only if a filter in between changed what leaves."""
from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace

from ai4hi_sdk.audit.hash_chain import read_entries
from ai4hi_sdk.jobs.components.payload_log import EGRESS_LOG, EgressLogFilter


class _Engine:  # the one engine method the filter uses, over NVFlare's real Workspace
    def __init__(self, root):
        (root / "startup").mkdir(exist_ok=True)  # what a site kit has
        (root / "local").mkdir(exist_ok=True)
        self.workspace = Workspace(str(root), "hospital-1")

    def get_workspace(self):
        return self.workspace


def _ctx(root) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, _Engine(root), private=True, sticky=False)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "hospital-1", private=False, sticky=False)
    return ctx


def test_logged_once_unless_changed(tmp_path, monkeypatch):
    monkeypatch.delenv("AI4HI_SITE_WORKSPACE_ROOT", raising=False)
    ctx = _ctx(tmp_path)
    shareable = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(3, np.float32)}).to_shareable()
    first, second = EgressLogFilter(), EgressLogFilter()
    second.process(first.process(shareable, ctx), ctx)
    assert len(list(read_entries(tmp_path / EGRESS_LOG))) == 1
    changed = DXO(DataKind.WEIGHT_DIFF, data={"w": np.zeros(3, np.float32)}).to_shareable()
    changed.set_header("ai4hi_egress_logged", shareable.get_header("ai4hi_egress_logged"))
    second.process(changed, ctx)
    entries = list(read_entries(tmp_path / EGRESS_LOG))
    assert len(entries) == 2 and entries[0]["record"]["sha256"] != entries[1]["record"]["sha256"]

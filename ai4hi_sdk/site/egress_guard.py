"""The site's egress guard (NVFlare task-result filter, installed at the site by ``ai4hi provision``
as its ``privacy.json`` scope, so it runs for every job whoever wrote it).

For every result leaving the site it describes the payload (names, dtypes, shapes, metric names,
SHA-256; never values), checks it against :func:`~ai4hi_sdk.site.egress_rules.egress_violation`
with the site's own policy and ledger, and appends the description to the site's hash-chained
egress log ``<site workspace>/ai4hi/egress_log.jsonl``. A result that breaks a rule is **replaced
by a refusal** (its reason starts with ``egress guard:``) and both are logged. If the log cannot
be written the filter raises and NVFlare sends nothing (fail closed).

It runs in the job's process, after the site runtime; it is the second line of defence: the first
is that only the site runtime and site-allowed code run at all (class allow list, code by hash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from ai4hi_sdk.audit.hash_chain import HashChainLog
from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.jobs.describe import describe_shareable
from ai4hi_sdk.jobs.wire import REFUSAL_PRIVACY_KEY, REFUSED_KEY, ROUND_KEY
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.config.site_policy import SITE_POLICY, load_site_policy
from ai4hi_sdk.site.egress_rules import egress_violation
from ai4hi_sdk.site_paths import site_workspace

EGRESS_LOG = Path("ai4hi") / "egress_log.jsonl"
#: shareable header: SHA-256 of the payload description the egress log already holds
LOGGED_HEADER = "ai4hi_egress_logged"


def _refusal(original: Shareable, reason: str, round_index: Any = None) -> Shareable:
    meta: dict[str, Any] = {REFUSED_KEY: reason}
    if round_index is not None:
        meta[ROUND_KEY] = round_index
    out = FLModelUtils.to_shareable(FLModel(metrics={}, meta=meta))
    current = original.get_header(AppConstants.CURRENT_ROUND)
    if current is not None:
        out.set_header(AppConstants.CURRENT_ROUND, current)
    return out


class Ai4hiEgressGuard(Filter):
    """Site-side: check and log every outgoing task result (see the module docstring)."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        record = describe_shareable(shareable, fl_ctx)
        # the site's privacy.json scope and the job may both install this filter: check and log a
        # payload once, unless a filter between the two changed it
        if record.get("sha256") and shareable.get_header(LOGGED_HEADER) == record["sha256"]:
            return shareable
        site = fl_ctx.get_identity_name()
        record["site"] = site
        workspace = site_workspace(site, fl_ctx.get_engine().get_workspace().get_root_dir())
        meta = self._meta(shareable)
        if record.get("round") is None and ROUND_KEY in meta:
            record["round"] = meta[ROUND_KEY]
        refused = bool(meta.get(REFUSED_KEY))
        violation = self._violation(record, refused, workspace)
        log = HashChainLog(workspace / EGRESS_LOG)
        if violation:
            log.append({**record, "blocked": violation})
            self.logger.error(f"egress guard blocked a {record.get('task')} result: {violation}")
            shareable = _refusal(shareable, f"egress guard: {violation}", record.get("round"))
            record = describe_shareable(shareable, fl_ctx)
            record.update(site=site, refusal=f"egress guard: {violation}")
        elif refused:
            record["refusal"] = str(meta.get(REFUSED_KEY))[:1000]
            if meta.get(REFUSAL_PRIVACY_KEY):
                record["refusal_privacy"] = meta[REFUSAL_PRIVACY_KEY]
        log.append(record)
        if record.get("sha256"):
            shareable.set_header(LOGGED_HEADER, record["sha256"])
        return shareable

    @staticmethod
    def _meta(shareable: Shareable) -> dict:
        try:
            return dict(from_shareable(shareable).meta or {})
        except Exception:  # noqa: BLE001 - no DXO: an error reply
            return {}

    @staticmethod
    def _violation(record: dict, refused: bool, workspace: Path) -> str | None:
        policy_path = workspace / SITE_POLICY
        try:
            policy = load_site_policy(policy_path) if policy_path.is_file() else None
        except ConfigError:
            policy = None
        if policy is None and not refused and record.get("payload_kind") != "none":
            # no policy: the runtime refuses everything; anything else is not the runtime's
            return "the site has no valid privacy policy: only refusals may leave"
        ledger = PrivacyLedger(workspace / PRIVACY_LEDGER)
        return egress_violation(record, refused=refused, require_dp=bool(policy and policy.require_dp),
                                require_secure_aggregation=bool(policy and policy.require_secure_aggregation),
                                lookup=ledger.committed_payload)

"""NVFlare adapter of the site-owned runtime: the only executor an ai4hi job runs at a site.

The class lives in the SDK installed at the site and is referenced by class path in the job's
client configuration; its arguments carry the job's settings and, where the job has any, its
custom code as data (see :mod:`ai4hi_sdk.site.code_bundle`). So a job needs no ``custom/``
folder at a site, NVFlare's class allow list (written by ``ai4hi provision``) admits only SDK
classes, and the site's :class:`~ai4hi_sdk.site.runtime.SiteRuntime` decides everything that
leaves. This module only converts NVFlare messages to and from the runtime's calls.
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.executor import Executor
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.jobs.wire import (CROSS_VALIDATE_TASK, MONITOR_TASK, PROTOCOL_TASKS, REFUSAL_PRIVACY_KEY,
                                 REFUSED_KEY, ROUND_KEY, SECAGG_META, TRAIN_TASK, VALIDATE_TASK, WIRE_VERSION, DROPPED_KEY,
                                 OPERATING_POINT_TASK, OPERATING_POINTS_META, split_models)
from ai4hi_sdk.site.runtime import Outgoing, SiteRuntime
from ai4hi_sdk.site_paths import site_workspace


class Ai4hiSiteExecutor(Executor):
    """Serves every task of an ai4hi job at a site.

    Args:
        job: the job spec in its JSON form.
        code: the job's custom code bundle (relative path -> base64), ``{}`` for SDK trainers.
        validation: validation settings (JSON form) of a validation/monitoring job, else ``None``.
        data_root: the job's default data root (a site's own settings win over it).
        wire_version: the SDK wire version the job was built with (a site refuses others).
    """

    def __init__(self, job: dict, code: dict | None = None, validation: dict | None = None,
                 data_root: str | None = None, wire_version: int = WIRE_VERSION):
        super().__init__()
        self.job = job
        self.code = code or {}
        self.validation = validation
        self.data_root = data_root
        self.wire_version = wire_version
        self._runtime: SiteRuntime | None = None
        from nvflare.app_opt.pt.decomposers import TensorDecomposer
        from nvflare.fuel.utils import fobs

        fobs.register(TensorDecomposer)  # the server sends torch tensors

    def _runtime_for(self, fl_ctx: FLContext) -> SiteRuntime:
        if self._runtime is None:
            site = fl_ctx.get_identity_name()
            root = fl_ctx.get_engine().get_workspace().get_root_dir()
            self._runtime = SiteRuntime(self.job, site_name=site, job_id=str(fl_ctx.get_job_id()),
                                        workspace=site_workspace(site, root), code=self.code,
                                        data_root=self.data_root, validation=self.validation,
                                        wire_version=self.wire_version)
        return self._runtime

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        runtime = self._runtime_for(fl_ctx)
        secure = runtime._secure
        if secure is not None and secure.dropped:  # fault injection: behave as if gone
            return FLModelUtils.to_shareable(FLModel(metrics={}, meta={DROPPED_KEY: "fault injection"}))
        try:
            incoming = FLModelUtils.from_shareable(shareable)
            out = self._dispatch(runtime, task_name, incoming)
        except Exception as err:  # noqa: BLE001 - every failure is a refusal: only its reason leaves
            reason = runtime.refusal_reason(err)
            self.log_warning(fl_ctx, f"refused {task_name}: {reason}")
            meta: dict[str, Any] = {REFUSED_KEY: reason}
            current = shareable.get_header(AppConstants.CURRENT_ROUND)
            if current is not None:
                meta[ROUND_KEY] = int(current)
            privacy = runtime.refusal_privacy(err) if isinstance(err, RoundRefused) else None
            if privacy:
                meta[REFUSAL_PRIVACY_KEY] = privacy
            return FLModelUtils.to_shareable(FLModel(metrics={}, meta=meta))
        if out.params:
            result = FLModel(params=out.params, params_type=ParamsType.DIFF if out.diff else ParamsType.FULL,
                             metrics=out.metrics if out.diff else None, meta=out.meta)
        else:
            result = FLModel(metrics=out.metrics, meta=out.meta)
        result.current_round = incoming.current_round  # the server rejects a result for another round
        if task_name == TRAIN_TASK and runtime._secure is not None:
            runtime._secure.after_train(incoming.meta.get(SECAGG_META) or {})
        return FLModelUtils.to_shareable(result)

    @staticmethod
    def _dispatch(runtime: SiteRuntime, task: str, incoming: FLModel) -> Outgoing:
        meta = incoming.meta or {}
        params = incoming.params or {}
        if task == TRAIN_TASK:
            return runtime.train(params, int(incoming.current_round or 0), incoming.total_rounds,
                                 meta.get(SECAGG_META))
        if task == VALIDATE_TASK:
            return runtime.validate(params)
        if task in PROTOCOL_TASKS:
            return runtime.protocol(task, meta.get(SECAGG_META))
        if task in (CROSS_VALIDATE_TASK, MONITOR_TASK, OPERATING_POINT_TASK):
            import torch

            models = {role: {k: torch.as_tensor(v) for k, v in state.items()}
                      for role, state in split_models(params).items()}
            if task == CROSS_VALIDATE_TASK:
                return runtime.cross_validate(models["candidate"], models["champion"], meta.get(OPERATING_POINTS_META))
            if task == OPERATING_POINT_TASK:
                return runtime.operating_point(models)
            return runtime.monitor(models["model"])
        raise RoundRefused(f"unknown task {task!r}")


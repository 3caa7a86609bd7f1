"""An in-process federation for the secure-aggregation glue: the real server driver
(:class:`~ai4hi_sdk.jobs.components.secagg_server.SecureRounds`) talks to real site runtimes
(:class:`~ai4hi_sdk.site.runtime.SiteRuntime` with the SDK's site executor's dispatch), each with its
own workspace (policy, a throwaway-CA identity, the consortium list), without NVFlare's transport.

Hooks let a test play the server or a site: ``on_send(task, site, data) -> data`` changes what one
site is sent, ``on_result(task, site, result) -> [results]`` what the server receives from it (drop,
alter, duplicate). ``sent`` records ``(task, site)`` of every message the server sent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.jobs.components.secagg_server import SecureRounds
from ai4hi_sdk.jobs.wire import REFUSED_KEY, TRAIN_TASK
from ai4hi_sdk.privacy.secagg.protocol.identity import make_throwaway_ca
from ai4hi_sdk.site.code_bundle import bundle_sha256, pack_code
from ai4hi_sdk.site.executor import Ai4hiSiteExecutor
from ai4hi_sdk.site.runtime import SiteRuntime
from ai4hi_sdk.site_paths import CONSORTIUM_LIST
from ai4hi_sdk.trainers.state import exchanged_state
from tests.site.conftest import FIXTURES, SMALL_MODEL, write_policy

SITES = ("hospital-1", "hospital-2", "hospital-3")
CODE = ["memory_trainer.py"]
MAX_SAMPLES = 32


def job_spec(privacy: dict | None = None, secure: dict | None = None, rounds: int = 1) -> JobSpec:
    privacy = dict(privacy or {})
    if secure is not False:
        privacy["secure_aggregation"] = {"clip": 1.0, "max_samples_per_site": MAX_SAMPLES, **(secure or {})}
    return JobSpec(name="glue", trainer="memory_trainer:MemoryTrainer", code=CODE, base_dir=str(FIXTURES),
                   min_sites=2, model={**SMALL_MODEL, "n_val": 4, "n_test": 4},
                   train={"rounds": rounds, "local_epochs": 1, "batch_size": 8, "lr": 0.05, "threads": 1},
                   privacy=privacy)


class Federation:
    """``sites`` with workspaces under ``root``; ``policy`` is added to every site's privacy policy,
    ``site_policy[site]`` to one site's; ``n_train`` (site -> examples) sizes each training split."""

    def __init__(self, root: Path, spec: JobSpec, sites=SITES, policy: dict | None = None,
                 site_policy: dict[str, dict] | None = None, n_train: dict[str, int] | None = None,
                 job_id: str = "job-1"):
        self.root, self.spec, self.sites, self.job_id = Path(root), spec, list(sites), job_id
        make_throwaway_ca(self.sites, {s: self.workspace(s) / "startup" for s in self.sites})
        members = {"consortium": "test", "server": "localhost", "sites": sorted(self.sites)}
        digest = bundle_sha256(pack_code(FIXTURES, CODE))
        self.runtimes: dict[str, SiteRuntime] = {}
        for index, site in enumerate(self.sites):
            ws = self.workspace(site)
            (ws / CONSORTIUM_LIST).parent.mkdir(parents=True, exist_ok=True)
            (ws / CONSORTIUM_LIST).write_text(json.dumps(members))
            write_policy(ws, **{"require_dp": False, "require_secure_aggregation": True, "min_count": 2,
                                "allowed_code_sha256": [digest], **(policy or {}), **(site_policy or {}).get(site, {})})
            (self.root / "data" / site).mkdir(parents=True, exist_ok=True)
            size = (n_train or {}).get(site, 8 + 4 * index)
            job = spec.model_dump(mode="json")
            job["model"] = {**job["model"], "n_train": size}  # the trainer's data size; not the model's shape
            self.runtimes[site] = SiteRuntime(job, site_name=site, job_id=job_id,
                                              workspace=ws, code=pack_code(FIXTURES, CODE),
                                              data_root=str(self.root / "data"))
        first = self.runtimes[self.sites[0]]
        self.initial = exchanged_state(first.model)
        self.on_send: Callable[[str, str, FLModel], FLModel] | None = None
        self.on_result: Callable[[str, str, FLModel], list[FLModel]] | None = None
        self.sent: list[tuple[str, str]] = []
        self.logs: list[tuple[str, str]] = []
        self.server = None if spec.privacy.secure_aggregation is None else SecureRounds(
            spec, job_id, self.sites, self.initial, first.trainer.declared_metrics(), self.send_and_wait, None,
            lambda level, msg: self.logs.append((level, msg)))

    def workspace(self, site: str) -> Path:
        return self.root / "ws" / site

    def _answer(self, task: str, site: str, data: FLModel) -> FLModel:
        runtime = self.runtimes[site]
        incoming = FLModel(params=dict(data.params or {}), params_type=data.params_type,
                           current_round=data.current_round, total_rounds=data.total_rounds,
                           meta=copy.deepcopy(data.meta))
        try:  # what Ai4hiSiteExecutor.execute does, without NVFlare's context
            out = Ai4hiSiteExecutor._dispatch(runtime, task, incoming)
        except Exception as err:  # noqa: BLE001 - every failure is a refusal
            return FLModel(metrics={}, meta={REFUSED_KEY: runtime.refusal_reason(err), "client_name": site},
                           current_round=incoming.current_round)
        if out.params:
            result = FLModel(params=out.params, params_type=ParamsType.DIFF if out.diff else ParamsType.FULL,
                             metrics=out.metrics if out.diff else None, meta=dict(out.meta))
        else:
            result = FLModel(metrics=out.metrics, meta=dict(out.meta))
        result.current_round = incoming.current_round
        result.meta["client_name"] = site
        if task == TRAIN_TASK and runtime._secure is not None:
            runtime._secure.after_train(incoming.meta.get("ai4hi_secagg") or {})
        return result

    def send_and_wait(self, task_name: str, data: FLModel, targets: list[str], min_responses: int,
                      timeout: int) -> list[FLModel]:
        results = []
        for site in targets:
            message = self.on_send(task_name, site, data) if self.on_send else data
            if message is None:
                continue
            self.sent.append((task_name, site))
            result = self._answer(task_name, site, message)
            results.extend(self.on_result(task_name, site, result) if self.on_result else [result])
        return results

    def run(self, rounds: int = 1) -> list[Any]:
        """Setup and ``rounds`` rounds; returns the round outcomes."""
        live = self.server.setup(self.sites)
        assert live, self.server.refused
        state = {k: v.clone() for k, v in self.initial.items()}
        outcomes = []
        for r in range(rounds):
            outcome = self.server.train_round(state, r, rounds, 60, min_inputs=2)
            state = {k: state[k] + outcome.mean_delta[k] for k in state}
            outcomes.append(outcome)
        return outcomes


def plain_deltas(root: Path, sites=SITES, n_train: dict[str, int] | None = None) -> dict[str, tuple[dict, int]]:
    """Each site's plain (unmasked) delta and weight for round 0 of :func:`job_spec` without secure
    aggregation: the reference a secure round must reproduce within its bound."""
    fed = Federation(root, job_spec(secure=False), sites, policy={"require_secure_aggregation": False},
                     n_train=n_train)
    out = {}
    for site, runtime in fed.runtimes.items():
        result = runtime.train(fed.initial, 0, 1)
        out[site] = ({k: torch.as_tensor(v) for k, v in result.params.items()}, int(result.meta["ai4hi_num_samples"]))
    return out

"""``SiteTrainer``: the site-side training loop over NVFlare's Client API.

A developer subclasses it and overrides small hooks; the base does the rest:

* ``build_model()``        -> ``nn.Module`` (must depend only on ``self.spec``: the server builds it too)
* ``build_datasets()``     -> object with ``.train`` and ``.val`` torch datasets
* ``build_loss()``         -> loss module
* ``build_optimizer(m)``   -> optimizer (default: SGD or Adam from ``spec.train``)
* ``train_step(m, batch, loss_fn)`` -> scalar loss tensor for one batch
* ``evaluate(m, dataset)`` -> ``dict[str, float]`` of aggregate metrics (no per-patient values)
* ``metric_names``         -> the names ``evaluate`` may return (declared: nothing else leaves)

The base chooses the device (CUDA + AMP when present, CPU otherwise), seeds every round from
``(seed, site, round)``, runs the local epochs/steps, collects metrics and computes the delta
``local - global`` that is sent as ``ParamsType.DIFF``. :meth:`fit` and :meth:`validate` are plain
Python (no NVFlare) so tests and benchmarks can call them directly; :meth:`run_federated` wires them
to the Client API.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.trainers.device import derive_seed, pick_device, seed_everything
from ai4hi_sdk.trainers.state import exchanged_state, load_exchanged_state, state_delta

#: FLModel.meta key carrying the FedAvg weight n_k (training examples per local epoch)
NUM_SAMPLES_KEY = "ai4hi_num_samples"
#: FLModel.meta key of a site's refusal (its reason); such a result carries nothing else
REFUSED_KEY = "ai4hi_refused"
#: task meta key telling sites how many sites the job trains with (client-level DP noise share)
NUM_SITES_KEY = "ai4hi_n_sites"
#: environment variable a runner sets to share CPU cores between co-located sites
TORCH_THREADS_ENV = "AI4HI_TORCH_THREADS"
#: task names used by the SDK's controller
TRAIN_TASK, VALIDATE_TASK = "train", "validate"


@dataclass
class LocalUpdate:
    """What one site produces in one round.

    Attributes:
        delta: ``local - global`` for every exchanged entry, float32 CPU tensors.
        num_samples: training examples in the local train split (the FedAvg weight).
        metrics: aggregate metrics (names from :meth:`SiteTrainer.declared_metrics`).
    """

    delta: dict[str, torch.Tensor]
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    #: exactly what leaves the site: ``(params, metrics, meta)`` (see :data:`PayloadEncoder`)
    payload: tuple[dict[str, Any], dict[str, float], dict[str, Any]] | None = None


#: ``encode(delta, metrics, num_samples) -> (params, metrics, meta)``: turns a round's result into
#: the payload that leaves the site (plain: the delta itself; secure aggregation: a masked vector)
PayloadEncoder = Callable[[dict[str, torch.Tensor], dict[str, float], int],
                          tuple[dict[str, Any], dict[str, float], dict[str, Any]]]


def plain_payload(delta: dict[str, torch.Tensor], metrics: dict[str, float], num_samples: int):
    """The default :data:`PayloadEncoder`: the float delta, the metrics and the FedAvg weight."""
    return delta, metrics, {NUM_SAMPLES_KEY: num_samples}


class SiteTrainer:
    """Base class of site trainers. See the module docstring for the hooks to override.

    Args:
        spec: the validated job spec (same at every site).
        site_dir: this site's data folder (``None`` when only the model is needed, e.g. on the server).
        site_name: this site's name (used for seeding and logs).
        device: force a device (``"cpu"``, ``"cuda:0"``); default: CUDA if available.
    """

    #: metric names ``evaluate`` may return; override in subclasses
    metric_names: ClassVar[tuple[str, ...]] = ("loss",)

    def __init__(self, spec: JobSpec, site_dir: str | Path | None = None, site_name: str = "local",
                 device: str | None = None, site_workspace: str | Path | None = None, job_id: str = "local"):
        self.spec = spec
        #: the site's workspace (policy, privacy budget, ledger); None outside a federation
        self.site_workspace = Path(site_workspace) if site_workspace is not None else None
        self.job_id = job_id
        self.site_dir = Path(site_dir) if site_dir is not None else None
        self.site_name = site_name
        self.device = pick_device(device)
        self.use_amp = self.device.type == "cuda"
        # the spec wins; else the runner's hint (the simulator shares the CPU cores between sites,
        # and oversubscribed torch thread pools slow every site down several-fold)
        threads = spec.train.threads or int(os.environ.get(TORCH_THREADS_ENV, "0") or 0)
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self._model: nn.Module | None = None
        self._datasets: Any = None
        self._guard: Any = None
        self._dp_session: Any = None
        #: what make_dp_compatible changed in the model (empty without DP-SGD)
        self.dp_model_changes: list[str] = []

    # ------------------------------------------------------------------ hooks (override these)
    def build_model(self) -> nn.Module:
        """Return a freshly initialised model. Must depend only on ``self.spec``."""
        raise NotImplementedError

    def build_datasets(self) -> Any:
        """Return an object with ``.train`` and ``.val`` datasets for this site."""
        raise NotImplementedError

    def build_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        train = self.spec.train
        if train.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)

    def train_step(self, model: nn.Module, batch: Any, loss_fn: nn.Module) -> torch.Tensor:
        """Forward one batch and return the loss (the base does backward/step/AMP)."""
        images, targets = self.to_device(batch)
        return loss_fn(model(images), targets)

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        """Aggregate metrics of ``model`` on ``dataset`` (names within ``metric_names``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for hooks
    def to_device(self, batch: Any) -> Any:
        """Move a batch (tensor, or tuple/list/dict of tensors) to the training device."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(item) for item in batch)
        if isinstance(batch, dict):
            return {key: self.to_device(value) for key, value in batch.items()}
        return batch

    def loader(self, dataset: Dataset, *, shuffle: bool, seed: int = 0) -> DataLoader:
        """Deterministic single-process loader (shuffle order fixed by ``seed``)."""
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=self.spec.train.batch_size, shuffle=shuffle,
                          generator=generator, num_workers=0, pin_memory=self.device.type == "cuda")

    def autocast(self):
        """Mixed-precision context on CUDA, a no-op on CPU and under DP-SGD (per-example clipping
        norms must not be computed from fp16 gradients)."""
        enabled = self.use_amp and self.spec.privacy.dp_sgd is None
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=enabled)

    # ------------------------------------------------------------------ declared outputs
    @classmethod
    def declared_metrics(cls) -> frozenset[str]:
        """Every metric name a site may send: training stats, validation metrics of the local
        model (``val_*``) and of the received global model (``global_val_*``), and the privacy
        parameters of the round (``dp_*``)."""
        names = {"train_loss", "train_steps", "train_samples", "train_seconds", "local_seconds",
                 "dp_epsilon", "dp_delta", "dp_noise_multiplier", "dp_sample_rate", "dp_steps"}
        for name in (*cls.metric_names, "samples"):
            names.add(f"val_{name}")
            names.add(f"global_val_{name}")
        return frozenset(names)

    # ------------------------------------------------------------------ lazily built pieces
    @property
    def model(self) -> nn.Module:
        if self._model is None:
            seed_everything(self.spec.train.seed)  # same initial weights everywhere (server included)
            model = self.build_model()
            if self.spec.privacy.dp_sgd is not None:
                from ai4hi_sdk.privacy.dp.dpsgd import make_dp_compatible

                model, self.dp_model_changes = make_dp_compatible(model)
            self._model = model.to(self.device)
        return self._model

    @property
    def guard(self) -> Any:
        """This site's privacy gate for the job (policy, budget, ledger)."""
        if self._guard is None:
            from ai4hi_sdk.privacy.dp.site_guard import SitePrivacyGuard
            from ai4hi_sdk.site_paths import dataset_id_for

            dataset = dataset_id_for(self.site_dir) if self.site_dir is not None else self.site_name
            self._guard = SitePrivacyGuard(self.spec.privacy.dp_sgd, self.site_workspace, dataset, self.job_id)
        return self._guard

    @property
    def datasets(self) -> Any:
        if self._datasets is None:
            if self.site_dir is None:
                raise ValueError("this trainer has no site data folder")
            self._datasets = self.build_datasets()
        return self._datasets

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The exchanged state of a freshly built model (seeded by ``spec.train.seed``)."""
        return exchanged_state(self.model)

    # ------------------------------------------------------------------ core, framework-free
    def fit(self, global_state: Mapping[str, torch.Tensor], round_index: int, *, total_rounds: int | None = None,
            n_sites: int = 1, encode: PayloadEncoder | None = None) -> LocalUpdate:
        """Train locally from ``global_state`` for one round and return the delta and metrics.

        Metrics: ``global_val_*`` of the received model, ``train_loss`` (mean over steps),
        ``train_steps``, ``train_samples``, ``train_seconds``, ``val_*`` of the trained model,
        ``local_seconds`` (all local work of the round, data loading and evaluation included) and,
        with DP-SGD, the round's privacy parameters and the epsilon spent so far (``dp_*``).

        With DP-SGD the site's budget is checked before training and spent before returning;
        with client-level DP the delta is clipped and noised. Raises
        :class:`~ai4hi_sdk.privacy.dp.site_guard.RoundRefused` when the site must not train or
        send (policy, budget): nothing is returned then, so nothing can leave.

        ``encode`` builds the outgoing payload (default :func:`plain_payload`; secure aggregation
        passes its quantise-and-mask step). It runs once, after the privacy spend, and the ledger
        records the description of exactly that payload.
        """
        fit_start = time.perf_counter()
        train, dp = self.spec.train, self.spec.privacy.dp_sgd
        self.guard.check_job("train", secure_aggregation=self.spec.privacy.secure_aggregation is not None)
        model = self.model
        load_exchanged_state(model, global_state)
        metrics = {f"global_val_{k}": v for k, v in self._evaluate_split(model).items()}

        seed = derive_seed(train.seed, self.site_name, round_index)
        seed_everything(seed)
        dataset = self.datasets.train
        if hasattr(dataset, "set_random_state"):
            dataset.set_random_state(seed)
        loss_fn = self.build_loss().to(self.device)
        optimizer = self.build_optimizer(model)
        loader = self.loader(dataset, shuffle=True, seed=seed)
        plan, forward_model = None, model
        if dp is not None:
            plan, loader, optimizer, forward_model = self._private_round(loader, optimizer, round_index, total_rounds)
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and dp is None)  # no AMP under DP-SGD

        start, losses, steps = time.perf_counter(), [], 0
        max_steps = train.max_steps_per_round or (plan.steps if plan else None)
        model.train()
        for epoch in range(train.local_epochs):
            for batch in loader:
                optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    loss = self.train_step(forward_model, batch, loss_fn)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
                steps += 1
                if max_steps and steps >= max_steps:
                    break
            if max_steps and steps >= max_steps:
                break
        if self._dp_session is not None:
            self._dp_session.clear()
        metrics.update(
            train_loss=sum(losses) / max(len(losses), 1),
            train_steps=float(steps),
            train_samples=float(len(dataset)),
            train_seconds=time.perf_counter() - start,
        )
        metrics.update({f"val_{k}": v for k, v in self._evaluate_split(model).items()})
        delta = state_delta(exchanged_state(model), {k: torch.as_tensor(v) for k, v in global_state.items()})
        client_dp = self.spec.privacy.client_dp
        if client_dp is not None:
            from ai4hi_sdk.privacy.dp.client_level import privatize_delta, secure_generator

            delta, _ = privatize_delta(delta, client_dp.clip, client_dp.noise_multiplier, n_sites, secure_generator())
        metrics["local_seconds"] = time.perf_counter() - fit_start
        payload: list = []

        def package(extra: Mapping[str, float]) -> tuple:
            if not payload:  # once: masking consumes the round's protocol state
                payload.append((encode or plain_payload)(delta, _finite({**metrics, **extra}), len(dataset)))
            return payload[0]

        if plan is not None:
            from ai4hi_sdk.privacy.egress import describe_payload

            # spend before anything leaves; the ledger records the description of the payload sent
            metrics.update(self.guard.commit_round(
                plan, steps, round_index, describe=lambda dp_metrics: describe_payload(*package(dp_metrics)[:2])))
        return LocalUpdate(delta=delta, num_samples=len(dataset), metrics=_finite(metrics), payload=package({}))

    def _private_round(self, loader: DataLoader, optimizer: torch.optim.Optimizer, round_index: int,
                       total_rounds: int | None) -> tuple[Any, DataLoader, Any, nn.Module]:
        """Poisson loader, clipping+noising optimizer and per-sample-gradient model for one round,
        after the site's budget allowed the round (raises RoundRefused otherwise)."""
        from ai4hi_sdk.privacy.dp.client_level import secure_generator
        from ai4hi_sdk.privacy.dp.dpsgd import DPSGDSession

        dp, train = self.spec.privacy.dp_sgd, self.spec.train
        if self._dp_session is None:
            self._dp_session = DPSGDSession(self.model, dp.grad_sample_mode)
        batches = max(len(loader), 1)
        steps = train.local_epochs * batches
        if train.max_steps_per_round:
            steps = min(steps, train.max_steps_per_round)
        plan = self.guard.plan_round(sample_rate=1.0 / batches, steps=steps,
                                     total_rounds=total_rounds or train.rounds, round_index=round_index)
        # sampling and noise randomness must stay secret: cryptographically seeded generators
        private_loader = self._dp_session.private_loader(loader, secure_generator())
        private_optimizer = self._dp_session.private_optimizer(optimizer, plan, train.batch_size, secure_generator())
        return plan, private_loader, private_optimizer, self._dp_session.wrapped

    def validate(self, global_state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Metrics (``val_*``) of ``global_state`` on this site's validation split."""
        self.guard.check_job("validate")
        load_exchanged_state(self.model, global_state)
        return _finite({f"val_{k}": v for k, v in self._evaluate_split(self.model).items()})

    def predict_test(self, global_state: Mapping[str, torch.Tensor]) -> tuple[Any, Any, dict[str, list[str]]]:
        """Per-study predictions of ``global_state`` on this site's fixed test split — for local
        validation only: the caller reduces them to aggregates, they never leave the site.

        Returns ``(scores, labels, attributes)``: float64 array ``(n,)`` of P(class 1) (softmax of
        2+ logits, sigmoid of one), int array ``(n,)``, and attribute name -> ``n`` subgroup
        strings (``dataset.attributes(i)``; empty if the dataset has none). Assumes batches of
        ``(images, labels)``; override for other tasks.
        """
        import numpy as np

        self.guard.check_job("validate")
        load_exchanged_state(self.model, global_state)
        dataset = self.datasets.test
        scores, labels = [], []
        self.model.eval()
        with torch.no_grad():
            for images, targets in self.loader(dataset, shuffle=False):
                with self.autocast():
                    logits = self.model(self.to_device(images)).float()
                prob = torch.softmax(logits, 1)[:, 1] if logits.shape[1] > 1 else torch.sigmoid(logits[:, 0])
                scores.append(prob.cpu().numpy())
                labels.append(targets.numpy())
        attributes: dict[str, list[str]] = {}
        if hasattr(dataset, "attributes"):
            for i in range(len(dataset)):
                for name, value in dataset.attributes(i).items():
                    attributes.setdefault(name, []).append(str(value))
        return (np.concatenate(scores).astype(np.float64) if scores else np.zeros(0),
                np.concatenate(labels).astype(int) if labels else np.zeros(0, int), attributes)

    def _evaluate_split(self, model: nn.Module) -> dict[str, float]:
        dataset = self.datasets.val
        model.eval()
        with torch.no_grad():
            result = dict(self.evaluate(model, dataset))
        unknown = set(result) - set(self.metric_names)
        if unknown:
            raise ValueError(f"{type(self).__name__}.evaluate returned undeclared metrics {sorted(unknown)}; "
                             "add them to metric_names")
        result["samples"] = float(len(dataset))
        return result

    # ------------------------------------------------------------------ NVFlare Client API loop
    def run_federated(self) -> None:
        """Serve the job's tasks until it ends (runs inside an NVFlare site): ``train``,
        ``validate`` and, with secure aggregation, the protocol's key/share/unmask tasks.

        A refused round (site policy, privacy budget, a secure-aggregation step that cannot be done
        safely) is answered with an empty result that only carries the reason (meta
        ``ai4hi_refused``): no model, no metrics.
        """
        import nvflare.client as flare
        from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

        from ai4hi_sdk.privacy.dp.site_guard import RoundRefused

        flare.init()
        if self.dp_model_changes:
            print(f"[ai4hi] {self.site_name}: model made DP-SGD compatible: " + "; ".join(self.dp_model_changes))
        secure = self._secure_aggregation_site()
        while flare.is_running():
            incoming = flare.receive()
            if incoming is None:
                break
            meta = incoming.meta or {}
            task = flare.get_task_name()
            try:
                if secure is not None and secure.dropped:  # fault injection: behave as if gone
                    from ai4hi_sdk.jobs.components.secagg_wire import DROPPED_KEY

                    flare.send(FLModel(metrics={}, meta={DROPPED_KEY: "fault injection"}))
                    continue
                state = {k: torch.as_tensor(v) for k, v in (incoming.params or {}).items()}
                if flare.is_evaluate():
                    flare.send(FLModel(metrics=self.validate(state)))
                    continue
                if not flare.is_train():
                    if secure is None:
                        raise RoundRefused(f"task {task!r} needs secure aggregation, which this job does not use")
                    flare.send(FLModel(params=secure.handle(task, self._secagg_meta(meta)),
                                       params_type=ParamsType.DIFF, metrics={}))
                    continue
                encode = secure.package(self._secagg_meta(meta)) if secure is not None else None
                update = self.fit(state, int(incoming.current_round or 0), total_rounds=incoming.total_rounds,
                                  n_sites=int(meta.get(NUM_SITES_KEY, 1)), encode=encode)
            except RoundRefused as refusal:
                print(f"[ai4hi] {self.site_name}: refused {task} (round {incoming.current_round}): {refusal}")
                flare.send(FLModel(metrics={}, meta={REFUSED_KEY: str(refusal)}))
                continue
            if secure is None:  # plain FedAvg: the delta and metrics as returned (a subclass may post-process)
                params, metrics, result_meta = plain_payload(update.delta, update.metrics, update.num_samples)
            else:  # the masked payload fit built (and the privacy ledger described)
                params, metrics, result_meta = update.payload
            flare.send(FLModel(params=params, params_type=ParamsType.DIFF, metrics=metrics, meta=result_meta))
            if secure is not None:
                secure.after_train(self._secagg_meta(meta))

    def _secure_aggregation_site(self) -> Any:
        if self.spec.privacy.secure_aggregation is None:
            return None
        from ai4hi_sdk.jobs.components.secagg_site import SecureAggregationSite

        return SecureAggregationSite(self)

    @staticmethod
    def _secagg_meta(meta: Mapping[str, Any]) -> Mapping[str, Any]:
        from ai4hi_sdk.jobs.components.secagg_wire import SECAGG_META

        value = meta.get(SECAGG_META)
        if not isinstance(value, Mapping):
            from ai4hi_sdk.privacy.dp.site_guard import RoundRefused

            raise RoundRefused("secure aggregation: the task carries no protocol data")
        return value


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """Drop undefined values (e.g. AUROC on a one-class split) instead of sending NaN."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}

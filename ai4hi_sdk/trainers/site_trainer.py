"""``SiteTrainer``: the site-side training loop over NVFlare's Client API.

A developer subclasses it and overrides small hooks; the base does the rest:

* ``build_model()``        -> ``nn.Module`` (must depend only on ``self.spec``: the server builds it too)
* ``build_datasets()``     -> object with ``.train`` and ``.val`` torch datasets
* ``build_loss()``         -> loss module
* ``build_optimizer(m)``   -> optimizer (default: SGD or Adam from ``spec.train``)
* ``train_step(m, batch, loss_fn)`` -> scalar loss tensor for one batch
* ``evaluate(m, dataset)`` -> ``dict[str, float]`` of aggregate metrics (no per-patient values)
* ``metric_names``         -> the names ``evaluate`` may return (declared: nothing else leaves)
* ``exchanged_names()``    -> state-dict names a round exchanges (default: every floating-point
  entry; an adapted backbone names only its adapters and head, so the frozen rest never travels)

The base chooses the device (CUDA + AMP when present, CPU otherwise) and gives helpers
(:meth:`loader`, :meth:`to_device`, :meth:`autocast`). A trainer holds **no privacy machinery**: at a
site, the SDK's site runtime (:mod:`ai4hi_sdk.site.runtime`, code the site installed) runs the
training loop (:func:`ai4hi_sdk.trainers.local_round.train_round`) with these hooks, applies the
site's policy, budget, DP-SGD, secure aggregation and egress guard, and decides what leaves.
Overriding anything else here changes nothing at a site.

:meth:`fit` and :meth:`validate` run the same loop locally (no NVFlare, no site policy; DP-SGD
accounted in memory) so developers can unit-test a trainer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.jobs.wire import WEAK_LABEL_METRICS
from ai4hi_sdk.trainers.device import pick_device, seed_everything
from ai4hi_sdk.trainers.state import exchanged_state, floating_state_names, load_exchanged_state

#: environment variable a runner sets to share CPU cores between co-located sites
TORCH_THREADS_ENV = "AI4HI_TORCH_THREADS"


@dataclass
class LocalUpdate:
    """What :meth:`SiteTrainer.fit` produces for one round (local use).

    Attributes:
        delta: ``local - global`` for every exchanged entry, float32 CPU tensors.
        num_samples: training examples in the local train split (the FedAvg weight).
        metrics: aggregate metrics (names from :meth:`SiteTrainer.declared_metrics`).
    """

    delta: dict[str, torch.Tensor]
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class SiteTrainer:
    """Base class of site trainers. See the module docstring for the hooks to override.

    Args:
        spec: the validated job spec (same at every site).
        site_dir: this site's data folder (``None`` when only the model is needed, e.g. on the server).
        site_name: this site's name (used for seeding and logs).
        device: force a device (``"cpu"``, ``"cuda:0"``); default: CUDA if available.
        site_workspace: a folder where the trainer may keep site-local files (e.g. drift references).
        job_id: the job's id (informational).
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
        self._local_privacy: Any = None  # fit()'s in-memory DP-SGD session and accountant
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
        """The spec's optimizer over the parameters that train (frozen backbone parts and LoRA's
        frozen A never get a gradient)."""
        from ai4hi_sdk.errors import UserError

        train = self.spec.train
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UserError("the model has no trainable parameters")
        if train.optimizer == "adam":
            return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)

    def train_step(self, model: nn.Module, batch: Any, loss_fn: nn.Module) -> torch.Tensor:
        """Forward one batch and return the loss (the base does backward/step/AMP)."""
        images, targets = self.to_device(batch)
        return loss_fn(model(images), targets)

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        """Aggregate metrics of ``model`` on ``dataset`` (names within ``metric_names``)."""
        raise NotImplementedError

    def exchanged_names(self) -> list[str]:
        """State-dict names of the tensors a round exchanges (global model in, delta out), in a fixed
        order: every floating-point entry of :attr:`model` by default. Override to exchange fewer
        (e.g. only the trainable adapters and head of an adapted backbone); they must depend only on
        ``self.spec``, as the server computes them too. At a site the runtime checks them (distinct
        floating-point entries of the model it built)."""
        return floating_state_names(self.model)

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
        model (``val_*``) and of the received global model (``global_val_*``), the privacy
        parameters of the round (``dp_*``) and the site runtime's weak-label agreement
        (``weak_label_*``, jobs with labels from reports)."""
        names = {"train_loss", "train_steps", "train_samples", "train_seconds", "local_seconds",
                 "dp_epsilon", "dp_delta", "dp_noise_multiplier", "dp_sample_rate", "dp_steps", *WEAK_LABEL_METRICS}
        for name in (*cls.metric_names, "samples"):
            names.add(f"val_{name}")
            names.add(f"global_val_{name}")
        return frozenset(names)

    # ------------------------------------------------------------------ lazily built pieces
    @property
    def model(self) -> nn.Module:
        if self._model is None:
            return self.build_seeded_model(private=self.spec.privacy.dp_sgd is not None)
        return self._model

    def build_seeded_model(self, *, private: bool) -> nn.Module:
        """Build the model from ``spec.train.seed`` (same initial weights everywhere, the server
        included), made DP-SGD compatible when ``private``, on the trainer's device; it becomes
        :attr:`model`. At a site the runtime calls this with the job's DP setting as it read it."""
        seed_everything(self.spec.train.seed)
        model = self.build_model()
        if private:
            from ai4hi_sdk.privacy.dp.dpsgd import make_dp_compatible

            model, self.dp_model_changes = make_dp_compatible(model)
        self._model = model.to(self.device)
        return self._model

    @property
    def datasets(self) -> Any:
        if self._datasets is None:
            if self.site_dir is None:
                raise ValueError("this trainer has no site data folder")
            self._datasets = self.build_datasets()
        return self._datasets

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The exchanged state (:meth:`exchanged_names`) of a freshly built model (seeded by
        ``spec.train.seed``)."""
        return exchanged_state(self.model, self.exchanged_names())

    # ------------------------------------------------------------------ local use (no site policy)
    def fit(self, global_state: Mapping[str, torch.Tensor], round_index: int, *,
            total_rounds: int | None = None) -> LocalUpdate:
        """Train locally from ``global_state`` for one round (local experiments and tests).

        The same loop a site runs (:func:`~ai4hi_sdk.trainers.local_round.train_round`), without
        a site's policy, budget or ledger: with DP-SGD in the spec, epsilon is accounted in memory
        (``dp_*`` metrics). What a site sends is decided by the site runtime, not here.
        """
        from ai4hi_sdk.trainers.local_round import train_round

        make_private = self._local_private(round_index, total_rounds) if self.spec.privacy.dp_sgd else None
        result = train_round(self, self.model, global_state, round_index, make_private=make_private,
                             names=self.exchanged_names())
        metrics = dict(result.metrics)
        if make_private is not None:
            metrics.update(self._local_privacy.spend(result.steps))
        return LocalUpdate(delta=result.delta, num_samples=result.num_samples, metrics=_finite(metrics))

    def _local_private(self, round_index: int, total_rounds: int | None):
        from ai4hi_sdk.trainers.local_round import private_setup, steps_per_round

        if self._local_privacy is None:
            self._local_privacy = _LocalPrivacy(self)
        privacy = self._local_privacy

        def make_private(loader: DataLoader, optimizer: torch.optim.Optimizer):
            q, steps = steps_per_round(self, loader)
            plan = privacy.plan(q, steps, total_rounds or self.spec.train.rounds)
            return private_setup(privacy.session, loader, optimizer, plan, self.spec.train.batch_size, self.device)

        return make_private

    def validate(self, global_state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Metrics (``val_*``) of ``global_state`` on this site's validation split."""
        from ai4hi_sdk.trainers.local_round import evaluate_split

        load_exchanged_state(self.model, global_state, self.exchanged_names())
        return _finite({f"val_{k}": v for k, v in evaluate_split(self, self.model, self.datasets.val).items()})

    def predict_test(self, global_state: Mapping[str, torch.Tensor]) -> tuple[Any, Any, dict[str, list[str]]]:
        """Per-study predictions of ``global_state`` on this site's fixed test split — for local
        validation only: the caller reduces them to aggregates, they never leave the site.

        Returns ``(scores, labels, attributes)``: float64 array ``(n,)`` of P(class 1) (softmax of
        2+ logits, sigmoid of one), int array ``(n,)``, and attribute name -> ``n`` subgroup
        strings (``dataset.attributes(i)``; empty if the dataset has none). Assumes batches of
        ``(images, labels)``; override for other tasks.
        """
        return self.predict_split(global_state, "test")

    def predict_validation(self, global_state: Mapping[str, torch.Tensor]) -> tuple[Any, Any, dict[str, list[str]]]:
        """:meth:`predict_test` on the validation split (where a model version's operating point
        and recalibration are fitted; never the test split)."""
        return self.predict_split(global_state, "val")

    def predict_split(self, global_state: Mapping[str, torch.Tensor],
                      split: str) -> tuple[Any, Any, dict[str, list[str]]]:
        """:meth:`predict_test` on ``self.datasets.<split>`` (``"val"`` or ``"test"``)."""
        import numpy as np

        load_exchanged_state(self.model, global_state, self.exchanged_names())
        dataset = getattr(self.datasets, split)
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


class _LocalPrivacy:
    """fit()'s DP-SGD outside a site: noise calibrated once per job, epsilon accounted in memory."""

    def __init__(self, trainer: SiteTrainer):
        from ai4hi_sdk.privacy.dp.accountants import create_accountant
        from ai4hi_sdk.privacy.dp.dpsgd import DPSGDSession

        dp = trainer.spec.privacy.dp_sgd
        if dp is None:
            raise ValueError("local DP-SGD needs the job's privacy.dp_sgd")
        self.dp = dp
        self.delta = self.dp.delta or 1e-5
        self.accountant = create_accountant(self.dp.accountant or "rdp")
        self.session = DPSGDSession(trainer.model, self.dp.grad_sample_mode)
        self.sigma: float | None = self.dp.noise_multiplier
        self._plan: Any = None

    def plan(self, q: float, steps: int, total_rounds: int) -> Any:
        from ai4hi_sdk.privacy.dp.calibration import noise_multiplier_for_target
        from ai4hi_sdk.privacy.dp.dpsgd import RoundPlan

        if self.sigma is None:
            assert self.dp.target_epsilon is not None  # the spec requires one of noise_multiplier, target_epsilon
            self.sigma = noise_multiplier_for_target(self.dp.target_epsilon, self.delta, q, steps * max(total_rounds, 1),
                                                     accountant=self.accountant.mechanism)
        self._plan = RoundPlan(self.sigma, q, steps, self.dp.max_grad_norm)
        return self._plan

    def spend(self, steps_taken: int) -> dict[str, float]:
        plan, steps = self._plan, max(int(steps_taken), 1)
        self.accountant.step(plan.noise_multiplier, plan.sample_rate, steps)
        return {"dp_epsilon": self.accountant.get_epsilon(self.delta), "dp_delta": self.delta,
                "dp_noise_multiplier": plan.noise_multiplier, "dp_sample_rate": plan.sample_rate,
                "dp_steps": float(steps)}


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """Drop undefined values (e.g. AUROC on a one-class split) instead of sending NaN."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}

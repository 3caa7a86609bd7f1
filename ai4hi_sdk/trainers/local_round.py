"""One round of local training with a trainer's hooks (torch only: no NVFlare, no privacy gate).

The site runtime calls :func:`train_round` with the model it holds and, under DP-SGD, a
``make_private`` callback that asks the site's gate for the round's budget before any step is
taken. :meth:`~ai4hi_sdk.trainers.site_trainer.SiteTrainer.fit` calls the same function for local
experiments. The trainer supplies the model, data, loss, optimizer and step (its hooks); the loop
itself, the delta and the metrics are the SDK's, so a trainer cannot change what they mean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ai4hi_sdk.trainers.device import derive_seed, seed_everything
from ai4hi_sdk.trainers.state import exchanged_state, load_exchanged_state, state_delta

#: a :class:`~ai4hi_sdk.trainers.site_trainer.SiteTrainer` (its hooks); not imported here, because
#: SiteTrainer.fit uses this module
Trainer = Any


@dataclass
class LocalRound:
    """What one round of local training produced (nothing of it has left the site).

    Attributes:
        delta: ``local - global`` for every exchanged entry, float32 CPU tensors.
        num_samples: training examples in the local train split (the FedAvg weight).
        steps: optimizer steps taken.
        metrics: ``global_val_*`` of the received model, ``train_loss``, ``train_steps``,
            ``train_samples``, ``train_seconds``, ``val_*`` of the trained model, ``local_seconds``.
    """

    delta: dict[str, torch.Tensor]
    num_samples: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class PrivateSetup:
    """DP-SGD pieces for one round: the Poisson loader, the clipping and noising optimizer, the
    per-sample-gradient model to run forward, and the plan (sigma, q, steps, clip)."""

    loader: DataLoader
    optimizer: Any
    forward_model: nn.Module
    plan: Any
    session: Any


#: ``make_private(loader, optimizer) -> PrivateSetup``; may raise to refuse the round before any step
MakePrivate = Callable[[DataLoader, torch.optim.Optimizer], PrivateSetup]


def evaluate_split(trainer: Trainer, model: nn.Module, dataset: Dataset) -> dict[str, float]:
    """The trainer's ``evaluate`` on ``dataset`` plus ``samples``; names outside the trainer's
    ``metric_names`` are an error, not a leak."""
    model.eval()
    with torch.no_grad():
        result = dict(trainer.evaluate(model, dataset))
    unknown = set(result) - set(trainer.metric_names)
    if unknown:
        raise ValueError(f"{type(trainer).__name__}.evaluate returned undeclared metrics {sorted(unknown)}; "
                         "add them to metric_names")
    result["samples"] = float(len(dataset))  # type: ignore[arg-type]  # map-style datasets (as torch's own DataLoader)
    return result


def train_round(trainer: Trainer, model: nn.Module, global_state: Mapping[str, torch.Tensor],
                round_index: int, *, make_private: MakePrivate | None = None,
                names: Sequence[str] | None = None) -> LocalRound:
    """Train ``model`` locally from ``global_state`` for one round with ``trainer``'s hooks.

    Seeds every round from ``(train.seed, site, round)``; runs ``local_epochs`` passes (capped by
    ``max_steps_per_round``, or by the DP plan's steps); mixed precision on CUDA except under
    DP-SGD. ``make_private`` (DP-SGD) is called after the loader and optimizer exist and before
    the first step; whatever it raises propagates with nothing trained. ``names`` are the exchanged
    entries (the global state holds exactly these; the delta is of these); default: the trainer's
    :meth:`~ai4hi_sdk.trainers.site_trainer.SiteTrainer.exchanged_names`.
    """
    fit_start = time.perf_counter()
    train = trainer.spec.train
    names = list(trainer.exchanged_names() if names is None else names)
    load_exchanged_state(model, global_state, names)
    metrics = {f"global_val_{k}": v for k, v in evaluate_split(trainer, model, trainer.datasets.val).items()}

    seed = derive_seed(train.seed, trainer.site_name, round_index)
    seed_everything(seed)
    dataset = trainer.datasets.train
    if hasattr(dataset, "set_random_state"):
        dataset.set_random_state(seed)
    loss_fn = trainer.build_loss().to(trainer.device)
    optimizer = trainer.build_optimizer(model)
    loader = trainer.loader(dataset, shuffle=True, seed=seed)
    forward_model, private = model, None
    if make_private is not None:
        private = make_private(loader, optimizer)
        loader, optimizer, forward_model = private.loader, private.optimizer, private.forward_model
    use_amp = trainer.use_amp and private is None  # per-example clipping norms must not come from fp16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start, losses, steps = time.perf_counter(), [], 0
    max_steps = train.max_steps_per_round or (private.plan.steps if private else None)
    model.train()
    for _epoch in range(train.local_epochs):
        for batch in loader:
            if private is not None and _batch_size(batch) == 0:
                # Poisson sampling drew nobody: the step must still release noise (the accountant
                # counts it), but opacus's conv grad samplers fail on an empty batch, so the zero
                # per-sample gradients are given directly and the optimizer adds the noise
                optimizer.zero_grad(set_to_none=True)
                _empty_grad_samples(model)
                optimizer.step()
                steps += 1
                if max_steps and steps >= max_steps:
                    break
                continue
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=trainer.device.type, dtype=torch.float16, enabled=use_amp):
                loss = trainer.train_step(forward_model, batch, loss_fn)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            steps += 1
            if max_steps and steps >= max_steps:
                break
        if max_steps and steps >= max_steps:
            break
    if private is not None:
        private.session.clear()
    metrics.update(train_loss=sum(losses) / max(len(losses), 1), train_steps=float(steps),
                   train_samples=float(len(dataset)), train_seconds=time.perf_counter() - start)
    metrics.update({f"val_{k}": v for k, v in evaluate_split(trainer, model, trainer.datasets.val).items()})
    delta = state_delta(exchanged_state(model, names), {k: torch.as_tensor(v) for k, v in global_state.items()})
    metrics["local_seconds"] = time.perf_counter() - fit_start
    return LocalRound(delta=delta, num_samples=len(dataset), steps=steps, metrics=metrics)


def _batch_size(batch: Any) -> int:
    """Examples in a batch (first dimension of its first tensor)."""
    while isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if isinstance(batch, dict) and batch:
        batch = next(iter(batch.values()))
    return int(batch.shape[0]) if hasattr(batch, "shape") and len(batch.shape) else 1


def _empty_grad_samples(model: nn.Module) -> None:
    for param in model.parameters():
        if param.requires_grad:
            # opacus's per-sample gradient slot: an empty batch has zero rows
            setattr(param, "grad_sample", torch.zeros((0, *param.shape), dtype=param.dtype, device=param.device))


def private_setup(session: Any, loader: DataLoader, optimizer: torch.optim.Optimizer, plan: Any,
                  batch_size: int, device: torch.device) -> PrivateSetup:
    """Wrap ``loader``/``optimizer`` for one DP-SGD round of ``plan``: Poisson sampling from a
    CPU generator (sampling happens on the CPU), noise from a generator on the model's device
    (opacus draws the noise there), both seeded from ``os.urandom``."""
    from ai4hi_sdk.privacy.dp.client_level import secure_generator

    private_loader = session.private_loader(loader, secure_generator("cpu"))
    private_optimizer = session.private_optimizer(optimizer, plan, batch_size, secure_generator(device))
    return PrivateSetup(private_loader, private_optimizer, session.wrapped, plan, session)


def steps_per_round(trainer: Trainer, loader: DataLoader) -> tuple[float, int]:
    """``(sample rate q, optimizer steps)`` of a DP-SGD round: q = 1 / batches per epoch."""
    train = trainer.spec.train
    batches = max(len(loader), 1)
    steps = train.local_epochs * batches
    if train.max_steps_per_round:
        steps = min(steps, train.max_steps_per_round)
    return 1.0 / batches, steps

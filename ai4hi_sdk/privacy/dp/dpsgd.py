"""Patient-level DP-SGD with opacus for one site's local training (torch only, no NVFlare).

* :func:`make_dp_compatible` turns a model into one opacus can train: BatchNorm -> GroupNorm
  (opacus's ``ModuleValidator.fix``), in-place activations made out-of-place; it says what it
  changed, and raises a clear error naming the layers it cannot fix. It depends only on the model,
  so the server and every site build the same architecture.
* :class:`DPSGDSession` wraps the model once for per-sample gradients and, each round, gives a
  Poisson-sampled data loader and a noisy, clipping optimizer. The state that leaves the site is
  the inner module's (no ``_module.`` prefix).
* ``grad_sample_mode="ghost"`` is opacus's Fast Gradient / Ghost Clipping: per-sample gradient
  *norms* (ghost norms for Linear/Embedding; for other layers the layer's per-sample gradients are
  computed, reduced to norms and dropped), then a second backward pass of the clipped, weighted
  per-sample losses gives the sum of clipped gradients. The loss must then be computed through
  :meth:`DPSGDSession.private_loss` (per-sample losses, ``loss.backward()`` runs both passes).

Sampling rate ``q = 1 / len(loader)`` (opacus's ``DPDataLoader``: each example is in each batch
independently with probability q); ``steps`` = optimizer steps actually taken. These, with the
noise multiplier, are what the accountant composes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ai4hi_sdk.errors import UserError


def make_dp_compatible(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Return ``(fixed_model, changes)``; raise :class:`UserError` if opacus cannot train it.

    ``changes`` lists human-readable replacements, e.g. ``"features.norm0: BatchNorm2d -> GroupNorm"``.
    """
    from opacus.validators import ModuleValidator

    before = {name: type(module).__name__ for name, module in model.named_modules()}
    fixed = ModuleValidator.fix(model)
    changes = [f"{name or '<model>'}: {before[name]} -> {type(module).__name__}"
               for name, module in fixed.named_modules() if name in before and before[name] != type(module).__name__]
    for name, module in fixed.named_modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False  # in-place ops overwrite activations opacus needs for per-sample grads
            changes.append(f"{name}: {type(module).__name__}(inplace=True) -> inplace=False")
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        details = "; ".join(str(e) for e in errors[:5])
        raise UserError(f"the model cannot be trained with DP-SGD: {details}")
    return fixed, changes


@dataclass
class RoundPlan:
    """Privacy parameters of one local round (what the accountant composes)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float


class PerSampleLoss(nn.Module):
    """A loss with a ``reduction`` attribute whose ``"none"`` gives one value per example.

    opacus's ghost clipping asks the criterion for ``reduction="none"`` and expects shape
    ``[batch]``; losses such as voxel-wise cross-entropy return ``[batch, ...]``, which this
    averages over the non-batch dimensions. With ``"mean"`` it is the wrapped loss unchanged (for
    an unweighted loss, the mean over the batch of the per-example means).
    """

    def __init__(self, loss_fn: nn.Module):
        super().__init__()
        self.loss_fn = loss_fn
        self.reduction = "mean"

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.reduction == "mean":
            return self.loss_fn(*args, **kwargs)
        if self.reduction != "none":
            raise ValueError(f"unsupported reduction {self.reduction!r}")
        inner = getattr(self.loss_fn, "reduction", None)
        if inner is None:
            raise UserError(f"{type(self.loss_fn).__name__} has no 'reduction' attribute: ghost clipping "
                            "needs per-example losses (use grad_sample_mode hooks)")
        setattr(self.loss_fn, "reduction", "none")  # a torch loss module's plain attribute
        try:
            loss = self.loss_fn(*args, **kwargs)
        finally:
            setattr(self.loss_fn, "reduction", inner)
        return loss.reshape(loss.shape[0], -1).mean(dim=1) if loss.dim() > 1 else loss


class DPSGDSession:
    """Per-sample-gradient wrapper of one model, reused across rounds.

    Args:
        model: the (DP-compatible) model; its parameters are shared with the wrapper.
        grad_sample_mode: opacus mode: ``"hooks"``, ``"functorch"``, ``"ew"`` or ``"ghost"``.
    """

    def __init__(self, model: nn.Module, grad_sample_mode: str = "hooks"):
        from opacus.grad_sample.utils import prepare_module

        # benign with opacus hooks on a first layer whose input needs no gradient; it would
        # otherwise be printed at every step
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        self.model = model
        self.grad_sample_mode = grad_sample_mode
        # ghost: the clipping norm lives in the module (set again from each round's plan)
        kwargs: dict[str, Any] = {"loss_reduction": "mean"}
        if grad_sample_mode == "ghost":
            kwargs["max_grad_norm"] = 1.0
        self.wrapped: nn.Module = prepare_module(model, grad_sample_mode, **kwargs)
        self._optimizer: Any = None

    @property
    def ghost(self) -> bool:
        return self.grad_sample_mode == "ghost"

    @staticmethod
    def batches_per_epoch(loader: DataLoader) -> int:
        return len(loader)

    def private_loader(self, loader: DataLoader, generator: torch.Generator) -> DataLoader:
        """Poisson-sampled version of ``loader`` (expected batch size unchanged)."""
        from opacus.data_loader import DPDataLoader

        return DPDataLoader.from_data_loader(loader, generator=generator)

    def private_optimizer(self, optimizer: torch.optim.Optimizer, plan: RoundPlan, expected_batch_size: int,
                          noise_generator: torch.Generator) -> Any:
        """Wrap ``optimizer``: clip each example's gradient to ``plan.max_grad_norm`` and add
        N(0, (noise_multiplier * max_grad_norm)^2) to the summed gradient before each step."""
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

        if self.ghost:
            # clipping happens in the backward pass (DPLossFastGradientClipping); the optimizer
            # only adds the noise and divides by the expected batch size, as DPOptimizer does
            setattr(self.wrapped, "max_grad_norm", plan.max_grad_norm)  # opacus GradSampleModule attribute
            self._optimizer = DPOptimizerFastGradientClipping(
                optimizer, noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                expected_batch_size=expected_batch_size, loss_reduction="mean", generator=noise_generator)
            return self._optimizer
        self._optimizer = DPOptimizer(optimizer, noise_multiplier=plan.noise_multiplier,
                                      max_grad_norm=plan.max_grad_norm, expected_batch_size=expected_batch_size,
                                      loss_reduction="mean", generator=noise_generator)
        return self._optimizer

    def private_loss(self, loss_fn: nn.Module) -> Any:
        """The loss to train with this round: ``loss_fn`` itself, or with ghost clipping opacus's
        ``DPLossFastGradientClipping`` around per-example losses (its ``backward()`` clips).
        Call after :meth:`private_optimizer`."""
        if not self.ghost:
            return loss_fn
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        if self._optimizer is None:
            raise RuntimeError("private_optimizer() must be called before private_loss()")
        return DPLossFastGradientClipping(self.wrapped, self._optimizer, PerSampleLoss(loss_fn), "mean")

    def clear(self) -> None:
        """Drop stored per-sample gradients (memory) after a round."""
        for param in self.model.parameters():
            setattr(param, "grad_sample", None)  # opacus stores per-sample gradients on the parameter
            param.grad = None
            if hasattr(param, "_norm_sample"):
                param._norm_sample = None

"""Keep a checkpoint's BatchNorm statistics: frozen, always in eval mode.

Swapping BatchNorm for GroupNorm (what opacus's ``ModuleValidator.fix`` does, and what
:func:`~ai4hi_sdk.privacy.dp.dpsgd.make_dp_compatible` does for a model trained from scratch)
would throw away a pretrained backbone's statistics. :class:`FrozenBatchNorm` instead normalises
with the checkpoint's running mean and variance and its affine parameters, all stored as buffers:
no gradient, no update by ``model.train()``, nothing batch-dependent (so per-sample gradients stay
per-sample under DP-SGD), and the state-dict names of the BatchNorm it replaces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ai4hi_sdk.errors import UserError


class FrozenBatchNorm(nn.Module):
    """``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` over channel dim 1.

    Buffers (same names as the BatchNorm): ``weight``, ``bias`` (absent without affine),
    ``running_mean``, ``running_var``, ``num_batches_tracked``.
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, bn: _BatchNorm):
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise UserError("a BatchNorm without running statistics (track_running_stats=False) cannot be frozen")
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.register_buffer("weight", bn.weight.detach().clone() if bn.weight is not None else None)
        self.register_buffer("bias", bn.bias.detach().clone() if bn.bias is not None else None)
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        if bn.num_batches_tracked is not None:
            self.register_buffer("num_batches_tracked", bn.num_batches_tracked.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, frozen statistics"


def freeze_batchnorm(model: nn.Module) -> list[str]:
    """Replace every BatchNorm1d/2d/3d in ``model`` by a :class:`FrozenBatchNorm` with its current
    statistics, in place; return the replaced modules' names."""
    replaced = [name for name, module in model.named_modules() if name and isinstance(module, _BatchNorm)]
    for name in replaced:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        frozen = FrozenBatchNorm(getattr(parent, attr))
        setattr(parent, attr, frozen)
    return replaced

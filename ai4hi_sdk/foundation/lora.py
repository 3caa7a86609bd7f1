"""Low-rank adapters (LoRA, FFA-LoRA) for ``nn.Linear`` and ``nn.Conv{1,2,3}d``, no peft.

A LoRA layer computes ``base(x) + scaling * B(A(dropout(x)))`` with ``scaling = alpha / rank``:

* Linear ``[.., in] -> [.., out]``: ``A = Linear(in, r)``, ``B = Linear(r, out)``, both without bias;
* ConvNd: ``A`` is a ConvNd(in, r) with the base layer's kernel, stride, padding and dilation,
  ``B`` a 1x1 ConvNd(r, out); the weight update ``B @ A`` has the base kernel's shape.

The LoRA layer *is* a subclass of the layer it adapts and keeps the base ``weight`` and ``bias``
under their names, so a base checkpoint loads into an adapted model unchanged and
:func:`merge_lora` gives back the original architecture and state-dict names. The adapter tensors
are ``<layer>.lora_A.weight`` and ``<layer>.lora_B.weight``. Every sub-layer is a plain torch layer,
so opacus computes per-sample gradients of the adapters with its standard hooks.

``A`` is initialised (Kaiming-uniform, as ``nn.Linear``) from a generator seeded by
``(seed, layer name)``, never from the global RNG: every site that adapts the same model with the
same seed gets the same ``A``. ``B`` starts at zero, so an adapted model starts equal to its base.
FFA-LoRA (Sun et al., ICLR 2024) freezes ``A``: a site's weight update is ``scaling * B_k A`` with
the same ``A`` everywhere, so FedAvg of the ``B_k`` is *exactly* the FedAvg of the weight updates;
plain LoRA averages ``B`` and ``A`` separately, and ``mean(B_k) mean(A_k) != mean(B_k A_k)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ai4hi_sdk.errors import UserError

_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LoRAConfig:
    """Adapter hyper-parameters.

    Attributes:
        rank: r, the inner dimension of ``B @ A`` (>= 1).
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout probability on the adapter's input (0 = none).
        seed: seeds ``A`` (with each layer's name); the same at every site.
        freeze_a: FFA-LoRA: ``A`` stays at its seeded initial value, only ``B`` trains.
    """

    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    seed: int = 0
    freeze_a: bool = False

    def __post_init__(self) -> None:
        if int(self.rank) != self.rank or self.rank < 1:
            raise UserError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise UserError(f"LoRA alpha must be a positive number, got {self.alpha!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def layer_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded by sha256(seed, layer name): the same at every site, independent of
    the global RNG and of the order in which layers are adapted."""
    digest = hashlib.sha256(f"ai4hi-lora|{seed}|{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)


def _kaiming_uniform_(weight: torch.Tensor, generator: torch.Generator) -> None:
    """``nn.Linear``'s default init (kaiming_uniform with a = sqrt(5)) drawn from ``generator``."""
    fan_in = weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        weight.copy_(torch.rand(weight.shape, generator=generator) * 2 * bound - bound)


class _LoRAMixin:
    """Adapter parts shared by :class:`LoRALinear` and the ``LoRAConv{1,2,3}d`` layers (set up by ``_init_lora``)."""

    lora_A: nn.Linear | _ConvNd
    lora_B: nn.Linear | _ConvNd
    lora_dropout: nn.Module
    scaling: float
    rank: int

    def _copy_base(self, base: nn.Module) -> None:
        """Take the base layer's weight and bias (the frozen part of the adapted layer)."""
        with torch.no_grad():
            self.weight.copy_(base.weight)  # type: ignore[attr-defined]  # the mixin sits on nn.Linear or _ConvNd
            if base.bias is not None:
                self.bias.copy_(base.bias)  # type: ignore[attr-defined]

    def _init_lora(self, config: LoRAConfig, name: str) -> None:
        self.rank = int(config.rank)
        self.scaling = float(config.scaling)
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        _kaiming_uniform_(self.lora_A.weight, layer_generator(config.seed, name))
        nn.init.zeros_(self.lora_B.weight)
        # the base layer never trains under LoRA; A does only in plain LoRA
        for param in (self.weight, self.bias):  # type: ignore[attr-defined]
            if param is not None:
                param.requires_grad_(False)
        self.lora_A.weight.requires_grad_(not config.freeze_a)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A`` in the base weight's shape (what :func:`merge_lora` adds)."""
        a, b = self.lora_A.weight, self.lora_B.weight
        if a.dim() == 2:
            return self.scaling * (b @ a)
        # conv: A [r, in, *k], B [out, r, 1...] -> [out, in, *k]
        return self.scaling * torch.einsum("or,ri...->oi...", b.flatten(1), a)


class LoRALinear(_LoRAMixin, nn.Linear):
    """``nn.Linear`` with a rank-r adapter; ``weight``/``bias`` are the frozen base parameters."""

    def __init__(self, base: nn.Linear, config: LoRAConfig, name: str):
        nn.Linear.__init__(self, base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        self._copy_base(base)
        where = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, config.rank, bias=False, **where)
        self.lora_B = nn.Linear(config.rank, base.out_features, bias=False, **where)
        self._init_lora(config, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.scaling * self.lora_B(self.lora_A(self.lora_dropout(x)))


def _make_lora_conv(conv_cls: type[nn.Module], dims: int) -> type[nn.Module]:
    class _LoRAConvN(_LoRAMixin, conv_cls):  # type: ignore[misc, valid-type]
        def __init__(self, base: nn.Module, config: LoRAConfig, name: str):
            if base.groups != 1:
                raise UserError(f"LoRA on '{name}': grouped convolutions (groups={base.groups}) are not supported")
            if base.padding_mode != "zeros":
                raise UserError(f"LoRA on '{name}': padding_mode {base.padding_mode!r} is not supported")
            conv_cls.__init__(self, base.in_channels, base.out_channels, base.kernel_size, stride=base.stride,
                              padding=base.padding, dilation=base.dilation, bias=base.bias is not None,
                              device=base.weight.device, dtype=base.weight.dtype)
            self._copy_base(base)
            where = {"device": base.weight.device, "dtype": base.weight.dtype}
            self.lora_A = cast(_ConvNd, conv_cls(base.in_channels, config.rank, base.kernel_size, stride=base.stride,
                                                 padding=base.padding, dilation=base.dilation, bias=False, **where))
            self.lora_B = cast(_ConvNd, conv_cls(config.rank, base.out_channels, 1, bias=False, **where))
            self._init_lora(config, name)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            base = self._conv_forward(x, self.weight, self.bias)
            return base + self.scaling * self.lora_B(self.lora_A(self.lora_dropout(x)))

    _LoRAConvN.__name__ = _LoRAConvN.__qualname__ = f"LoRAConv{dims}d"
    return _LoRAConvN


LoRAConv1d = _make_lora_conv(nn.Conv1d, 1)
LoRAConv2d = _make_lora_conv(nn.Conv2d, 2)
LoRAConv3d = _make_lora_conv(nn.Conv3d, 3)
_LORA_CONV = {nn.Conv1d: LoRAConv1d, nn.Conv2d: LoRAConv2d, nn.Conv3d: LoRAConv3d}
_LORA_TYPES: tuple[type[nn.Module], ...] = (LoRALinear, LoRAConv1d, LoRAConv2d, LoRAConv3d)


def is_lora_layer(module: nn.Module) -> bool:
    return isinstance(module, _LORA_TYPES)


def _set_child(root: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, child)


def inject_lora(root: nn.Module, config: LoRAConfig, *, prefix: str = "",
                include: Iterable[str] | None = None) -> list[str]:
    """Replace every ``nn.Linear`` / ``nn.Conv{1,2,3}d`` under ``root`` (exact types, not already
    adapted) by its LoRA version, in place.

    Args:
        root: the module to adapt (e.g. a backbone inside a classifier).
        config: rank, alpha, dropout, seed, whether ``A`` is frozen.
        prefix: ``root``'s name inside the whole model (e.g. ``"encoder."``); it is part of the
            name that seeds ``A``, so adapting the same model gives the same ``A`` everywhere.
        include: if given, only layers whose name (relative to ``root``) ends with one of these
            suffixes, e.g. ``("attn.qkv", "attn.out_proj")``.

    Returns:
        the adapted layers' names relative to ``root``, in module order.
    """
    suffixes = tuple(include) if include is not None else None
    targets = [(name, module) for name, module in root.named_modules()
               if name and type(module) in (nn.Linear, *_CONV_TYPES)
               and (suffixes is None or name.endswith(suffixes))]
    if not targets:
        raise UserError("LoRA found no Linear or Conv layer to adapt"
                        + (f" matching {list(suffixes)}" if suffixes else ""))
    for name, module in targets:
        full = f"{prefix}{name}"
        # layer constructors draw default inits from the global RNG: restore it, so adapting a
        # model does not change what is built after it
        with torch.random.fork_rng(devices=[]):
            new = (LoRALinear(module, config, full) if type(module) is nn.Linear
                   else _LORA_CONV[type(module)](module, config, full))
        new.train(module.training)
        _set_child(root, name, new)
    return [name for name, _ in targets]


def merge_lora(root: nn.Module) -> int:
    """Fold every adapter into its base layer, in place: each LoRA layer becomes a plain
    ``nn.Linear`` / ``nn.ConvNd`` with ``weight + scaling * B @ A`` (same state-dict names as the
    un-adapted model). Returns how many layers were merged. For export; the merged layer's
    ``requires_grad`` follows the LoRA layer's base weight (frozen)."""
    merged = 0
    for name, module in list(root.named_modules()):
        if not name or not is_lora_layer(module):
            continue
        with torch.no_grad():
            weight = module.weight + module.delta_weight().to(module.weight.dtype)
        if isinstance(module, LoRALinear):
            plain: nn.Linear | _ConvNd = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        else:
            conv_cls = next(c for c in _CONV_TYPES if isinstance(module, c))
            plain = cast(_ConvNd, conv_cls(module.in_channels, module.out_channels, module.kernel_size,
                                           stride=module.stride, padding=module.padding, dilation=module.dilation,
                                           bias=module.bias is not None))
        plain.to(device=module.weight.device, dtype=module.weight.dtype)  # in place, as Module.to is
        with torch.no_grad():
            plain.weight.copy_(weight)
            if module.bias is not None and plain.bias is not None:
                plain.bias.copy_(module.bias)
        for param in plain.parameters():
            param.requires_grad_(module.weight.requires_grad)
        plain.train(module.training)
        _set_child(root, name, plain)
        merged += 1
    return merged

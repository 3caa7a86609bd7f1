"""Adapting a backbone to a task: which tensors train (and so are exchanged), which stay frozen.

Modes (:data:`ADAPTATION_MODES`):

* ``linear_probe``: backbone frozen, only the head trains;
* ``lora``: LoRA adapters (A and B) on the backbone's Linear/Conv layers + head;
* ``ffa_lora``: FFA-LoRA, ``A`` frozen from a shared seed, ``B`` + head train (FedAvg of the
  adapters is exact; the default under secure aggregation or DP);
* ``partial``: the last ``blocks`` backbone blocks (and the final norm after them) + head;
* ``full``: everything.

In every mode the MONAI ViT parts that must not train stay frozen
(:func:`~ai4hi_sdk.foundation.architectures.freeze_unused_vit_parts`), and so does a checkpoint's
frozen BatchNorm (:mod:`~ai4hi_sdk.foundation.batchnorm`, buffers only). :func:`apply_adaptation`
returns the state-dict names of the trainable tensors: the only ones a site needs to send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, get_args

import torch
from torch import nn

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.architectures import BackboneLayout, freeze_unused_vit_parts, model_layout
from ai4hi_sdk.foundation.lora import LoRAConfig, inject_lora
from ai4hi_sdk.trainers.state import LORA_MARKER, exchange_size, exchanged_state

AdaptationMode = Literal["linear_probe", "lora", "ffa_lora", "partial", "full"]
ADAPTATION_MODES: tuple[str, ...] = get_args(AdaptationMode)


@dataclass(frozen=True)
class AdaptationConfig:
    """How to adapt a backbone.

    Attributes:
        mode: one of :data:`ADAPTATION_MODES`.
        lora: adapter rank, alpha, dropout and seed (``freeze_a`` is set by the mode).
        targets: LoRA only on layers whose name (inside the backbone) ends with one of these,
            e.g. ``("attn.qkv", "attn.out_proj")``; ``None``: every Linear/Conv of the backbone.
        blocks: ``partial``: how many of the last backbone blocks train.
    """

    mode: AdaptationMode = "ffa_lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    targets: tuple[str, ...] | None = None
    blocks: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ADAPTATION_MODES:
            raise UserError(f"unknown adaptation {self.mode!r}; choose one of {', '.join(ADAPTATION_MODES)}")
        if int(self.blocks) != self.blocks or self.blocks < 1:
            raise UserError(f"adaptation blocks must be an integer >= 1, got {self.blocks!r}")

    @classmethod
    def from_mapping(cls, value: str | Mapping[str, Any] | None, *, default_seed: int = 0) -> "AdaptationConfig":
        """From a job spec's ``model.adaptation``: a mode name or ``{mode, rank, alpha, dropout,
        seed, targets, blocks}``. ``seed`` defaults to ``default_seed`` (the job's seed)."""
        if value is None:
            return cls(lora=LoRAConfig(seed=default_seed))
        if isinstance(value, str):
            value = {"mode": value}
        if not isinstance(value, Mapping):
            raise UserError(f"adaptation must be a mode name or a mapping, got {type(value).__name__}")
        data = dict(value)
        unknown = sorted(set(data) - {"mode", "rank", "alpha", "dropout", "seed", "targets", "blocks"})
        if unknown:
            raise UserError(f"adaptation: unknown keys {unknown}")
        lora = LoRAConfig(rank=data.get("rank", 4), alpha=float(data.get("alpha", 8.0)),
                          dropout=float(data.get("dropout", 0.0)), seed=int(data.get("seed", default_seed)))
        targets = data.get("targets")
        return cls(mode=data.get("mode", "ffa_lora"), lora=lora,
                   targets=tuple(targets) if targets is not None else None, blocks=data.get("blocks", 1))


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(trainable)


def apply_adaptation(model: nn.Module, config: AdaptationConfig | str,
                     layout: BackboneLayout | None = None) -> list[str]:
    """Adapt ``model`` in place (inject adapters, freeze the rest) and return the state-dict names
    of its trainable tensors, in state-dict order.

    Call it after loading the backbone's weights (adapters keep the base weights' names, so
    loading afterwards works too). ``layout`` defaults to :func:`model_layout` (a
    :class:`~ai4hi_sdk.foundation.architectures.BackboneClassifier` or a UNETR).

    Raises:
        UserError: unknown mode, more ``partial`` blocks than the backbone has, or no layer for LoRA.
    """
    if isinstance(config, str):
        config = AdaptationConfig(mode=config)  # type: ignore[arg-type]
    layout = layout or model_layout(model)
    backbone = model.get_submodule(layout.backbone)
    if any(LORA_MARKER in f".{name}" for name, _ in model.named_parameters()):
        raise UserError("the model already carries adapters; build a fresh model to adapt it again")
    _set_trainable(model, config.mode == "full")
    if config.mode in ("lora", "ffa_lora"):
        lora = LoRAConfig(rank=config.lora.rank, alpha=config.lora.alpha, dropout=config.lora.dropout,
                          seed=config.lora.seed, freeze_a=config.mode == "ffa_lora")
        inject_lora(backbone, lora, prefix=f"{layout.backbone}.", include=config.targets)
    elif config.mode == "partial":
        if config.blocks > len(layout.blocks):
            raise UserError(f"adaptation 'partial' asks for the last {config.blocks} blocks; the backbone has "
                            f"{len(layout.blocks)}")
        for name in (*layout.blocks[-config.blocks:], *layout.final_norm):
            _set_trainable(model.get_submodule(name), True)
    for name in layout.head:
        _set_trainable(model.get_submodule(name), True)
    freeze_unused_vit_parts(model)
    return trainable_state_names(model)


def trainable_state_names(model: nn.Module) -> list[str]:
    """State-dict names of the parameters that require gradients, in state-dict order."""
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    return [name for name in model.state_dict() if name in trainable]


def trainable_state(model: nn.Module, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """CPU float32 copies of the trainable tensors (or of ``names``): what a round exchanges."""
    return exchanged_state(model, trainable_state_names(model) if names is None else names)


def upload_size(model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
    """Elements exchanged per round vs the full model (:func:`~ai4hi_sdk.trainers.state.exchange_size`).

    Returns ``{"trainable_elements", "full_model_elements", "percent"}``; the full model is every
    floating-point state tensor of the un-adapted model (what is sent without adaptation: adapter
    tensors excluded from it).
    """
    size = exchange_size(model, trainable_state_names(model) if names is None else names)
    return {"trainable_elements": size["elements"], "full_model_elements": size["full_model_elements"],
            "percent": size["percent"]}

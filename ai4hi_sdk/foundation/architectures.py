"""Backbones and the task models built on them.

* :func:`build_backbone` -> MONAI ``ViT`` (no classification head; sin-cos position embeddings,
  as in MONAI's ``MaskedAutoEncoderViT``) or MONAI ``ResNet`` (no final layer), from a preset
  (:mod:`ai4hi_sdk.foundation.presets`).
* :class:`BackboneClassifier`: backbone + linear head. A ViT's tokens ``[B, N, hidden]`` (after its
  final LayerNorm) are mean-pooled to ``[B, hidden]``; a ResNet gives ``[B, features]`` itself.
* :func:`build_unetr`: MONAI ``UNETR`` whose ``vit`` is the backbone (segmentation; the backbone
  must have patch 16 and 12 blocks, which UNETR hard-codes).
* :class:`BackboneLayout` says, for :func:`~ai4hi_sdk.foundation.adaptation.apply_adaptation`,
  where the backbone, its blocks, its final norm and the task head are.
* :func:`freeze_unused_vit_parts`: parameters opacus cannot give per-sample gradients or that
  never receive a gradient are frozen (DESIGN.md section 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, cast

import torch
from torch import nn

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.presets import resolve_backbone


def vit_arguments(config: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments shared by MONAI's ``ViT``, ``MaskedAutoEncoderViT`` and ``UNETR``."""
    return {
        "in_channels": int(config["in_channels"]),
        "img_size": int(config["img_size"]),
        "patch_size": int(config["patch_size"]),
        "hidden_size": int(config["hidden_size"]),
        "mlp_dim": int(config["mlp_dim"]),
        "num_layers": int(config["num_layers"]),
        "num_heads": int(config["num_heads"]),
        "spatial_dims": int(config["spatial_dims"]),
        "qkv_bias": bool(config.get("qkv_bias", False)),
    }


def build_backbone(backbone: str | Mapping[str, Any]) -> nn.Module:
    """A freshly initialised backbone (global RNG: seed before calling for identical weights).

    ViT: ``forward(x [B, C, *S]) -> (tokens [B, N, hidden], per-block hidden states)``.
    ResNet: ``forward(x) -> features [B, block_inplanes[-1] * expansion]``.
    """
    config = resolve_backbone(backbone)
    if config["family"] == "vit":
        from monai.networks.nets import ViT

        return ViT(**vit_arguments(config), pos_embed_type="sincos", classification=False)
    from monai.networks.nets import ResNet

    return ResNet(block=config["block"], layers=list(config["layers"]), block_inplanes=list(config["block_inplanes"]),
                  spatial_dims=int(config["spatial_dims"]), n_input_channels=int(config["in_channels"]),
                  feed_forward=False)


def feature_size(backbone: str | Mapping[str, Any]) -> int:
    """Width of the pooled features the head receives."""
    config = resolve_backbone(backbone)
    if config["family"] == "vit":
        return int(config["hidden_size"])
    expansion = 1 if config["block"] == "basic" else 4
    return int(config["block_inplanes"][-1]) * expansion


@dataclass(frozen=True)
class BackboneLayout:
    """State-dict prefixes of a task model's parts.

    Attributes:
        backbone: the backbone module's name (``"encoder"``, ``"vit"``).
        blocks: the backbone's blocks in forward order (``partial`` trains the last N).
        final_norm: modules after the last block that ``partial`` trains with it.
        head: the task head's modules (always trained).
    """

    backbone: str
    blocks: tuple[str, ...]
    final_norm: tuple[str, ...]
    head: tuple[str, ...]


POOLS = ("mean", "max")


class BackboneClassifier(nn.Module):
    """Backbone + linear head: ``forward(x [B, C, *S]) -> logits [B, num_classes]``.

    Args:
        backbone: preset name or mapping (see :mod:`~ai4hi_sdk.foundation.presets`).
        num_classes: logits of the head.
        pool: how a ViT's tokens ``[B, N, hidden]`` become one vector: ``"mean"`` (the usual
            global pool) or ``"max"`` (per feature over tokens: a small finding anywhere in the
            image can dominate; see ``benchmarks/README.md``). A ResNet pools itself.
    """

    def __init__(self, backbone: str | Mapping[str, Any], num_classes: int = 2, pool: str = "mean"):
        super().__init__()
        if pool not in POOLS:
            raise UserError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.config = resolve_backbone(backbone)
        self.pool = pool
        self.encoder = build_backbone(self.config)
        self.head = nn.Linear(feature_size(self.config), num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[B, feature_size]``."""
        out = self.encoder(x)
        if isinstance(out, tuple):  # ViT: (tokens [B, N, hidden], hidden states)
            tokens = out[0]
            return tokens.amax(dim=1) if self.pool == "max" else tokens.mean(dim=1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def layout(self) -> BackboneLayout:
        if self.config["family"] == "vit":
            blocks = tuple(f"encoder.blocks.{i}" for i in range(len(cast(nn.ModuleList, self.encoder.blocks))))
            return BackboneLayout("encoder", blocks, ("encoder.norm",), ("head",))
        return BackboneLayout("encoder", tuple(f"encoder.layer{i}" for i in range(1, 5)), (), ("head",))


def build_unetr(backbone: str | Mapping[str, Any], out_channels: int, *, feature_size: int = 16,
                norm_name: str = "instance") -> nn.Module:
    """MONAI ``UNETR`` around a ViT backbone (its ``vit`` module holds the backbone's weights
    under the same names, prefixed ``vit.``). Position embeddings are sin-cos and frozen like the
    backbone's (UNETR itself would make them learnable).

    Raises:
        UserError: not a ViT backbone, or not patch 16 with 12 blocks (fixed in UNETR).
    """
    from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
    from monai.networks.nets import UNETR

    config = resolve_backbone(backbone)
    if config["family"] != "vit" or int(config["patch_size"]) != 16 or int(config["num_layers"]) != 12:
        raise UserError("UNETR needs a ViT backbone with patch_size 16 and num_layers 12 "
                        f"(got family={config['family']}, patch_size={config.get('patch_size')}, "
                        f"num_layers={config.get('num_layers')})")
    args = vit_arguments(config)
    del args["num_layers"], args["patch_size"]  # fixed inside UNETR
    model = UNETR(out_channels=out_channels, feature_size=feature_size, norm_name=norm_name, **args)
    grid = [int(config["img_size"]) // 16] * int(config["spatial_dims"])
    model.vit.patch_embedding.position_embeddings = build_sincos_position_embedding(
        grid, int(config["hidden_size"]), int(config["spatial_dims"]))
    return model


def unetr_layout(model: nn.Module) -> BackboneLayout:
    """Layout of a model from :func:`build_unetr`: the decoder and skip encoders are the head."""
    blocks = tuple(f"vit.blocks.{i}" for i in range(len(cast(nn.ModuleList, cast(nn.Module, model.vit).blocks))))
    head = tuple(name for name, _ in model.named_children() if name != "vit")
    return BackboneLayout("vit", blocks, ("vit.norm",), head)


def model_layout(model: nn.Module) -> BackboneLayout:
    """Layout of a :class:`BackboneClassifier` or a :func:`build_unetr` model."""
    if isinstance(model, BackboneClassifier):
        return model.layout()
    if hasattr(model, "vit") and hasattr(model, "proj_feat"):
        return unetr_layout(model)
    raise UserError(f"no backbone layout known for {type(model).__name__}; pass a BackboneLayout")


def freeze_unused_vit_parts(model: nn.Module) -> list[str]:
    """Freeze, in place, the parameters of MONAI ViT parts that must not train, and return their
    state-dict names (those that were trainable):

    * each ``TransformerBlock.norm_cross_attn`` without cross-attention: never used, so never gets
      a gradient (opacus's optimizer refuses a trainable parameter without per-sample gradients);
    * position embeddings (sin-cos: fixed by design; UNETR's learnable ones live directly on the
      patch-embedding block, where opacus has no per-sample gradient rule);
    * ``MaskedAutoEncoderViT``'s ``cls_token`` and ``mask_tokens``: parameters of the top module,
      which opacus could only handle by running the whole MAE through functorch (which fails on its
      random masking). They stay at their seeded initial values, the same at every site.
    """
    from monai.networks.blocks.patchembedding import PatchEmbeddingBlock
    from monai.networks.blocks.transformerblock import TransformerBlock
    from monai.networks.nets import MaskedAutoEncoderViT

    frozen: list[str] = []

    def freeze(prefix: str, params: Any) -> None:
        for name, param in params:
            if param.requires_grad:
                param.requires_grad_(False)
                frozen.append(f"{prefix}{name}")

    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, TransformerBlock) and not module.with_cross_attention:
            freeze(f"{prefix}norm_cross_attn.", module.norm_cross_attn.named_parameters())
        elif isinstance(module, PatchEmbeddingBlock):
            freeze(prefix, [("position_embeddings", module.position_embeddings)])
        elif isinstance(module, MaskedAutoEncoderViT):
            freeze(prefix, [(n, getattr(module, n)) for n in ("cls_token", "mask_tokens", "decoder_pos_embedding")])
    return frozen

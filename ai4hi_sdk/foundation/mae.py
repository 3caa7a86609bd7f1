"""Masked-autoencoder pretraining around MONAI's ``MaskedAutoEncoderViT`` (2D and 3D).

* :func:`build_mae`: the MAE whose encoder is a backbone preset (:mod:`~ai4hi_sdk.foundation.presets`),
  made opacus-compatible (:func:`~ai4hi_sdk.foundation.architectures.freeze_unused_vit_parts`).
* :func:`patchify`: images ``[B, C, *S]`` -> patches ``[B, N, prod(patch) * C]`` in the token order of
  MONAI's convolutional patch embedding (row-major over the patch grid).
* :class:`MAELoss`: mean squared error on the *masked* patches (targets normalised per patch, as in
  He et al. 2022), one value per sample: sample ``i``'s loss depends on image ``i`` only, which is
  what DP-SGD's per-sample clipping needs. ``reduction="mean"`` averages over the batch.
* :func:`encoder_state`: the MAE's encoder weights under MONAI ``ViT`` names (the backbone a task
  model loads); the decoder, mask token and class token are pretraining-only.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
from torch import nn

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.architectures import freeze_unused_vit_parts, vit_arguments
from ai4hi_sdk.foundation.presets import resolve_backbone

#: MAE-only state-dict prefixes (not part of the backbone)
MAE_ONLY_PREFIXES = ("decoder_", "mask_tokens", "cls_token")


def build_mae(backbone: str | Mapping[str, Any], *, masking_ratio: float = 0.75, decoder_hidden_size: int | None = None,
              decoder_mlp_dim: int | None = None, decoder_num_layers: int = 1,
              decoder_num_heads: int | None = None) -> nn.Module:
    """A ``MaskedAutoEncoderViT`` with the backbone's encoder; decoder sizes default to the
    encoder's. Returns the model with its unused/unsupported parameters frozen (the list is on
    ``model.frozen_parameters``).

    ``model(x [B, C, *S]) -> (pred [B, N, prod(patch) * C], mask [B, N] int, 1 = masked)``.
    """
    from monai.networks.nets import MaskedAutoEncoderViT

    config = resolve_backbone(backbone)
    if config["family"] != "vit":
        raise UserError(f"masked-autoencoder pretraining needs a ViT backbone, got family {config['family']!r}")
    if not 0.0 < masking_ratio < 1.0:
        raise UserError(f"masking_ratio must be in (0, 1), got {masking_ratio}")
    args = vit_arguments(config)
    model = MaskedAutoEncoderViT(
        **args, masking_ratio=masking_ratio,
        decoder_hidden_size=decoder_hidden_size or args["hidden_size"],
        decoder_mlp_dim=decoder_mlp_dim or args["mlp_dim"],
        decoder_num_layers=decoder_num_layers,
        decoder_num_heads=decoder_num_heads or args["num_heads"],
        proj_type="conv", pos_embed_type="sincos", decoder_pos_embed_type="sincos")
    setattr(model, "frozen_parameters", freeze_unused_vit_parts(model))  # names, for trainable_state_names
    return model


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, *S]`` -> ``[B, N, prod(patch) * C]``; patch ``n`` is the ``n``-th token of MONAI's
    convolutional patch embedding (row-major over the grid). Spatial sizes must be multiples of
    ``patch_size``."""
    from einops import rearrange

    dims = images.dim() - 2
    if any(s % patch_size for s in images.shape[2:]):
        raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of patch {patch_size}")
    if dims == 2:
        return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)
    if dims == 3:
        return rearrange(images, "b c (h p) (w q) (d r) -> b (h w d) (p q r c)",
                         p=patch_size, q=patch_size, r=patch_size)
    raise ValueError(f"patchify needs 2D or 3D images, got shape {tuple(images.shape)}")


class MAELoss(nn.Module):
    """Masked reconstruction loss: ``loss(pred, mask, images) -> [B]`` or its batch mean.

    Args:
        patch_size: the MAE's patch side.
        norm_pix: normalise each target patch to zero mean and unit variance (He et al. 2022).
        reduction: ``"mean"`` (batch mean, what the optimiser uses) or ``"none"`` (``[B]``).
    """

    def __init__(self, patch_size: int, *, norm_pix: bool = True, reduction: Literal["mean", "none"] = "mean"):
        super().__init__()
        self.patch_size = int(patch_size)
        self.norm_pix = norm_pix
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.patch_size)
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True, unbiased=False)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N]
        mask = mask.to(per_patch.dtype)
        per_sample = (per_patch * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # [B]
        if self.reduction == "none":
            return per_sample
        if self.reduction != "mean":
            raise ValueError(f"unsupported reduction {self.reduction!r}")
        # an empty Poisson-sampled batch (DP-SGD) contributes zero, not NaN
        return per_sample.mean() if per_sample.numel() else per_sample.sum()


def encoder_state(mae_state: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """The encoder of an MAE state dict under MONAI ``ViT`` names.

    MAE ``blocks.{0..L-1}`` -> ViT ``blocks.{i}``, MAE ``blocks.{L}`` (its final LayerNorm inside the
    block sequence) -> ViT ``norm``; ``patch_embedding.*`` unchanged; decoder, mask and class
    tokens dropped. Raises ``KeyError`` naming a missing encoder entry.
    """
    out: dict[str, torch.Tensor] = {}
    norm_prefix = f"blocks.{num_layers}."
    for name, tensor in mae_state.items():
        if name.startswith(MAE_ONLY_PREFIXES):
            continue
        if name.startswith(norm_prefix):
            out["norm." + name[len(norm_prefix):]] = tensor
        elif name.startswith(("blocks.", "patch_embedding.")):
            out[name] = tensor
    for needed in ("norm.weight", "norm.bias", "patch_embedding.position_embeddings"):
        if needed not in out:
            raise KeyError(f"MAE state has no entry for the encoder's '{needed}'")
    return out


def looks_like_mae(state: Mapping[str, Any]) -> bool:
    """A ``MaskedAutoEncoderViT`` state dict (it has the decoder's embedding and prediction)."""
    return "decoder_embed.weight" in state and "decoder_pred.weight" in state

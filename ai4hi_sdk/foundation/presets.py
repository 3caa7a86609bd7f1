"""Named backbone architectures (pure data, no torch: the CLI lists them in ``--help``).

A backbone is the part of a model a checkpoint carries and pretraining produces: a MONAI ViT
encoder (``family: vit``; ``monai.networks.nets.ViT`` without its classification head, sin-cos
position embeddings) or a MONAI ResNet without its final layer (``family: resnet``, BatchNorm).
Every other key is a constructor argument. A job or the import CLI names a preset, or gives a
mapping ``{preset: NAME, key: value, ...}`` that overrides some of its values.
"""

from __future__ import annotations

from typing import Any, Mapping

from ai4hi_sdk.errors import UserError

PRESETS: dict[str, dict[str, Any]] = {
    # the tiny configuration of the tests, the label-efficiency benchmark and the CI jobs
    "vit-micro-2d": {"family": "vit", "spatial_dims": 2, "in_channels": 1, "img_size": 32, "patch_size": 4,
                     "hidden_size": 48, "mlp_dim": 96, "num_layers": 3, "num_heads": 4},
    "vit-micro-3d": {"family": "vit", "spatial_dims": 3, "in_channels": 1, "img_size": 32, "patch_size": 8,
                     "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4},
    # UNETR needs patch 16 and 12 blocks (it taps blocks 3, 6 and 9)
    "vit-unetr-micro-3d": {"family": "vit", "spatial_dims": 3, "in_channels": 1, "img_size": 32, "patch_size": 16,
                           "hidden_size": 48, "mlp_dim": 96, "num_layers": 12, "num_heads": 4},
    "vit-small-2d": {"family": "vit", "spatial_dims": 2, "in_channels": 1, "img_size": 128, "patch_size": 16,
                     "hidden_size": 384, "mlp_dim": 1536, "num_layers": 12, "num_heads": 6},
    # ViT-B/16 (Dosovitskiy et al.): the reference size of the upload-size goal
    "vit-b16-2d": {"family": "vit", "spatial_dims": 2, "in_channels": 1, "img_size": 224, "patch_size": 16,
                   "hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12},
    "vit-b16-3d": {"family": "vit", "spatial_dims": 3, "in_channels": 1, "img_size": 96, "patch_size": 16,
                   "hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12},
    "resnet-micro-2d": {"family": "resnet", "spatial_dims": 2, "in_channels": 1, "block": "basic",
                        "layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64]},
    "resnet18-2d": {"family": "resnet", "spatial_dims": 2, "in_channels": 1, "block": "basic",
                    "layers": [2, 2, 2, 2], "block_inplanes": [64, 128, 256, 512]},
}

_VIT_KEYS = {"family", "spatial_dims", "in_channels", "img_size", "patch_size", "hidden_size", "mlp_dim",
             "num_layers", "num_heads", "qkv_bias"}
_RESNET_KEYS = {"family", "spatial_dims", "in_channels", "block", "layers", "block_inplanes"}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def resolve_backbone(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """A preset name or ``{preset: NAME, overrides...}`` or a full mapping -> checked arguments.

    Raises:
        UserError: unknown preset, unknown family or key, or inconsistent sizes (image size not
            a multiple of the patch size, hidden size not a multiple of the heads).
    """
    if isinstance(value, str):
        if value not in PRESETS:
            raise UserError(f"unknown backbone architecture {value!r}; known: {', '.join(preset_names())}")
        config = dict(PRESETS[value])
    elif isinstance(value, Mapping):
        config = dict(value)
        name = config.pop("preset", None)
        if name is not None:
            config = {**resolve_backbone(str(name)), **config}
    else:
        raise UserError(f"backbone must be a preset name or a mapping, got {type(value).__name__}")
    family = config.get("family")
    allowed = {"vit": _VIT_KEYS, "resnet": _RESNET_KEYS}.get(str(family))
    if allowed is None:
        raise UserError(f"backbone family must be 'vit' or 'resnet', got {family!r}")
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise UserError(f"backbone ({family}): unknown keys {unknown}; allowed: {sorted(allowed)}")
    if config.get("spatial_dims") not in (2, 3):
        raise UserError(f"backbone spatial_dims must be 2 or 3, got {config.get('spatial_dims')!r}")
    if family == "vit":
        missing = sorted(_VIT_KEYS - {"qkv_bias"} - set(config))
        if missing:
            raise UserError(f"backbone (vit): missing keys {missing}")
        if int(config["img_size"]) % int(config["patch_size"]):
            raise UserError(f"backbone: img_size {config['img_size']} is not a multiple of "
                            f"patch_size {config['patch_size']}")
        if int(config["hidden_size"]) % int(config["num_heads"]):
            raise UserError(f"backbone: hidden_size {config['hidden_size']} is not a multiple of "
                            f"num_heads {config['num_heads']}")
        step = 4 if config["spatial_dims"] == 2 else 6  # sin-cos position embeddings per axis
        if int(config["hidden_size"]) % step:
            raise UserError(f"backbone: hidden_size {config['hidden_size']} must be a multiple of {step} for "
                            f"{config['spatial_dims']}D sin-cos position embeddings")
    return config

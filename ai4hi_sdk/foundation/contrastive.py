"""Image-report contrastive pretraining (ConVIRT / CLIP style): the model, the loss, zero-shot use
and the image backbone's export.

* :class:`ImageReportModel`: an image tower (a foundation backbone from
  :mod:`~ai4hi_sdk.foundation.presets` with its pooling and a linear projection, i.e. a
  :class:`~ai4hi_sdk.foundation.architectures.BackboneClassifier` whose head projects to the
  joint space) and a text tower (:class:`~ai4hi_sdk.foundation.text.TextEncoder` + projection),
  plus a learned temperature. ``forward(images [B, C, *S], ids [B, L]) -> (image_emb [B, E],
  text_emb [B, E], logit_scale [])``.
* :func:`info_nce` / :class:`ContrastiveLoss`: the symmetric InfoNCE loss of ConVIRT (Zhang et al.
  2020) and CLIP (Radford et al. 2021): cosine similarities times ``exp(logit_scale)``, cross-entropy
  of each image against every report of the batch and of each report against every image.
* :func:`zero_shot_scores`: class probabilities of images from text prompts alone (no hand label).
* :func:`image_backbone_state` / :func:`export_image_backbone`: the image tower's backbone as a
  backbone folder with its card, which
  :class:`~ai4hi_sdk.foundation.trainers.BackboneClassificationTrainer` loads for the adaptation
  modes (few-label use).

**Privacy.** The loss couples the examples of a batch: one study's loss depends on every other
report and image in it (they are its negatives), so per-example gradient clipping (DP-SGD) does not
bound one patient's influence on the update, and opacus's accounting would not hold. An image-report
job therefore uses **client-level DP** (the site's whole update clipped and noised) with **secure
aggregation** (the server sees only the sum); the job spec refuses ``dp_sgd`` with ``method:
image_report``, and a site whose policy requires patient-level DP refuses the job. Report text,
tokens and per-study embeddings stay inside the site process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.text import ByteTokenizer, TextEncoder, normalize_report_text

#: CLIP's initial temperature (0.07) and its cap on the logit scale (100)
INITIAL_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = math.log(100.0)
IMAGE_PREFIX = "image.encoder."


class ImageReportModel(nn.Module):
    """Image and report encoders into one ``embed_dim``-wide space.

    Args:
        backbone: preset name or mapping (ViT or ResNet, 2D).
        pool: ``mean`` or ``max`` over a ViT's tokens (as in ``BackboneClassifier``).
        embed_dim: width of the joint space.
        text_width, text_layers, text_heads, text_stride, max_len: the text encoder
            (:class:`~ai4hi_sdk.foundation.text.TextEncoder`) and the tokenizer's length.
        temperature: initial softmax temperature; learned (as ``logit_scale = log(1 / T)``) unless
            ``learn_temperature`` is false.
    """

    def __init__(self, backbone: str | Mapping[str, Any] = "vit-micro-2d", *, pool: str = "mean",
                 embed_dim: int = 64, text_width: int = 64, text_layers: int = 2, text_heads: int = 4,
                 text_stride: int = 2, max_len: int = 320, temperature: float = INITIAL_TEMPERATURE,
                 learn_temperature: bool = True):
        from ai4hi_sdk.foundation.architectures import BackboneClassifier, freeze_unused_vit_parts

        super().__init__()
        if not 0 < temperature <= 1:
            raise UserError(f"temperature must be in (0, 1], got {temperature}")
        self.image = BackboneClassifier(backbone, num_classes=embed_dim, pool=pool)
        if self.image.config["spatial_dims"] != 2:
            raise UserError("image-report pretraining reads 2D images; choose a 2D backbone")
        self.text = TextEncoder(max_len=max_len, width=text_width, layers=text_layers, heads=text_heads,
                                stride=text_stride)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)),
                                        requires_grad=learn_temperature)
        self.tokenizer = ByteTokenizer(max_len)
        self.frozen_parameters = freeze_unused_vit_parts(self)

    @property
    def backbone_config(self) -> dict[str, Any]:
        return self.image.config

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, *S] -> [B, E]`` (not normalised)."""
        return self.image(images)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, L] int64 -> [B, E]`` (not normalised)."""
        return self.text_proj(self.text(ids))

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[P, E]`` of free-text prompts (normalised like reports, then tokenised)."""
        ids = self.tokenizer.encode_batch([normalize_report_text(p) for p in prompts])
        return self.encode_text(ids.to(self.logit_scale.device))

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(ids), self.logit_scale


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float, *,
             image_weight: float = 0.5) -> torch.Tensor:
    """Symmetric InfoNCE of a batch of matching pairs (row ``i`` of each is one study).

    ``logits[i, j] = exp(logit_scale) * cos(image_i, text_j)`` (scale capped at 100);
    loss = ``image_weight * CE(logits, i) + (1 - image_weight) * CE(logits^T, i)``, each cross-entropy
    a mean over the batch. ``image_weight = 0.5`` is CLIP's; ConVIRT uses 0.75. An empty batch
    gives 0.

    Args:
        image_emb, text_emb: ``[B, E]`` (normalised here, in float32).
        logit_scale: log of the inverse temperature (a scalar tensor or float).
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(f"need two [B, E] batches of the same shape, got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    if image_emb.shape[0] == 0:
        return image_emb.sum() * 0.0 + text_emb.sum() * 0.0
    image = nn.functional.normalize(image_emb.float(), dim=-1)
    text = nn.functional.normalize(text_emb.float(), dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=image.device).clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image @ text.T
    target = torch.arange(image.shape[0], device=image.device)
    image_to_text = nn.functional.cross_entropy(logits, target)
    text_to_image = nn.functional.cross_entropy(logits.T, target)
    return image_weight * image_to_text + (1.0 - image_weight) * text_to_image


class ContrastiveLoss(nn.Module):
    """:func:`info_nce` as a module: ``loss(image_emb, text_emb, logit_scale) -> scalar``."""

    def __init__(self, image_weight: float = 0.5):
        super().__init__()
        if not 0.0 <= image_weight <= 1.0:
            raise UserError(f"image_weight must be in [0, 1], got {image_weight}")
        self.image_weight = float(image_weight)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        return info_nce(image_emb, text_emb, logit_scale, image_weight=self.image_weight)


def _class_embeddings(model: ImageReportModel, prompts: Sequence[str | Sequence[str]]) -> torch.Tensor:
    """``[C, E]`` unit vectors: the mean of each class's normalised prompt embeddings (CLIP's
    prompt ensembling), normalised again."""
    if len(prompts) < 2:
        raise UserError("zero-shot classification needs prompts for at least two classes")
    rows = []
    for index, entry in enumerate(prompts):
        texts = [entry] if isinstance(entry, str) else list(entry)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise UserError(f"zero-shot class {index}: give one or more non-empty prompt strings")
        emb = nn.functional.normalize(model.encode_prompts(texts).float(), dim=-1)
        rows.append(nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def zero_shot_scores(model: ImageReportModel, images: torch.Tensor, prompts: Sequence[str | Sequence[str]], *,
                     batch_size: int = 128) -> torch.Tensor:
    """Classify ``images`` with text prompts only: no hand label, no training.

    Args:
        model: a trained :class:`ImageReportModel` (put in eval mode here, left so).
        images: ``[N, C, *S]`` float, preprocessed like the training images.
        prompts: one entry per class: a prompt, or several (their embeddings are averaged), e.g.
            ``["no focal opacity", ["round opacity in the right lung", "round opacity in the left lung"]]``.

    Returns:
        ``[N, C]`` float32 CPU: softmax over classes of ``exp(logit_scale) * cos(image, class)``;
        column ``c`` is the score of class ``c`` (use it for AUROC).
    """
    model.eval()
    device = model.logit_scale.device
    classes = _class_embeddings(model, prompts)
    scale = model.logit_scale.detach().float().clamp(max=MAX_LOGIT_SCALE).exp()
    out = []
    for start in range(0, images.shape[0], batch_size):
        emb = nn.functional.normalize(model.encode_image(images[start:start + batch_size].to(device)).float(), dim=-1)
        out.append(torch.softmax(scale * emb @ classes.T, dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros((0, len(prompts)))


#: the synthetic task's prompts: class 0 no opacity, class 1 a round opacity (either lung)
OPACITY_PROMPTS: tuple[tuple[str, ...], ...] = (
    ("no focal opacity", "the lungs are clear"),
    ("round opacity in the right lung", "round opacity in the left lung"),
)


def image_backbone_state(state: Mapping[str, torch.Tensor] | ImageReportModel) -> dict[str, torch.Tensor]:
    """The image tower's backbone (``image.encoder.*``) under the backbone's own names.

    Accepts a model or its state dict (e.g. the exchanged global state of the last round).
    """
    if isinstance(state, nn.Module):
        state = state.state_dict()
    out = {name[len(IMAGE_PREFIX):]: tensor for name, tensor in state.items() if name.startswith(IMAGE_PREFIX)}
    if not out:
        raise UserError(f"no '{IMAGE_PREFIX}*' entries: not an image-report model state")
    return out


def export_image_backbone(state: Mapping[str, torch.Tensor] | ImageReportModel, arch: str | Mapping[str, Any],
                          out_dir: str | Path, *, pool: str | None = None, overwrite: bool = False,
                          **card_fields: Any) -> Any:
    """Write the image encoder as a backbone folder (``backbone.safetensors``, ``provenance.json``
    with the card, ``BACKBONE_CARD.md``) that ``BackboneClassificationTrainer`` loads by
    ``model.checkpoint`` after checking its sha256.

    ``card_fields`` are :func:`~ai4hi_sdk.foundation.provenance.backbone_card`'s (``site_images``,
    ``rounds``, ``local_epochs``, ``client_dp``, ...); ``pool`` is stated in the card's method
    (a ViT's; use the same ``pool`` downstream). Returns the provenance record.
    """
    from ai4hi_sdk.foundation.architectures import build_backbone
    from ai4hi_sdk.foundation.presets import resolve_backbone
    from ai4hi_sdk.foundation.provenance import export_pretrained_backbone

    backbone = image_backbone_state(state)
    # an exchanged state holds floating-point entries only: integer buffers (BatchNorm's
    # num_batches_tracked, unused once a loaded BatchNorm is frozen) come from a fresh backbone
    with torch.random.fork_rng(devices=[]):
        reference = build_backbone(resolve_backbone(arch)).state_dict()
    for name, tensor in reference.items():
        if name not in backbone and not tensor.is_floating_point():
            backbone[name] = tensor
    method = "image-report contrastive (symmetric InfoNCE, byte-level text encoder)"
    if pool and resolve_backbone(arch)["family"] == "vit":
        method += f", {pool}-pooled tokens"
    card_fields.setdefault("method", method)
    return export_pretrained_backbone(backbone, arch, out_dir, overwrite=overwrite, **card_fields)

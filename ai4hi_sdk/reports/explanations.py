"""Site-local explanation pages: saliency maps of the candidate and the champion on a sample of the
site's test images, for the site's own radiologists. The page never leaves the site.

:func:`render_explanations` computes, for each sampled image, a saliency map per model
(:func:`saliency_maps`: MONAI's occlusion sensitivity, or Grad-CAM given a target layer), draws
image + overlays with each model's score and the label, and writes one self-contained HTML page
(base64 PNG) with mode 0600 into a folder of the site's workspace that the caller names. It returns
only what may leave: the number of images and, where the caller gives anatomical masks for at least
``k`` of them, each model's mean share of saliency inside the mask. No image, map, score or label
is in the return value.

Saliency for occlusion is the drop of P(positive) when a patch is replaced by the image mean
(clipped at 0: regions that argue for the positive call), normalised to [0, 1] per image; Grad-CAM
is MONAI's (class 1 of a two-logit model, the single logit otherwise). 3D images are shown by
their middle slice along the first spatial axis; the in-mask share uses the whole volume.
"""

from __future__ import annotations

import base64
import html
import io
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Sized, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

PAGE = "explanations.html"
Method = Literal["occlusion", "gradcam"]


def _positive_prob(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` softmax class 1, or ``(B, 1)`` sigmoid -> ``(B, 1)`` P(positive)."""
    logits = logits.float()
    return torch.softmax(logits, 1)[:, 1:2] if logits.shape[1] > 1 else torch.sigmoid(logits[:, :1])


def saliency_maps(model: nn.Module, images: torch.Tensor, *, method: Method = "occlusion",
                  target_layer: str | None = None, mask_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Saliency of the positive class and P(positive) for a batch ``(B, C, *spatial)``.

    Returns ``(maps (B, *spatial) in [0, 1], scores (B,))``.
    """
    model.eval()
    with torch.no_grad():
        scores = _positive_prob(model(images))[:, 0]
    maps = []
    if method == "occlusion":
        from monai.visualize import OcclusionSensitivity

        occ = OcclusionSensitivity(nn_module=model, mask_size=mask_size, n_batch=32, mode="mean_img",
                                   overlap=0.5, activate=_positive_prob, verbose=False)
        for i in range(images.shape[0]):
            with torch.no_grad(), warnings.catch_warnings():
                # MONAI's own indexing trips a torch deprecation notice; nothing the caller can act on
                warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional indexing.*")
                occ_map, _ = occ(images[i:i + 1])
            prob = occ_map[0]  # (C, *spatial) or, with a class axis kept, (C, *spatial, 1)
            if prob.ndim == images.ndim:
                prob = prob[..., 0]
            drop = (scores[i] - prob).clamp(min=0).amax(0)  # over channels -> (*spatial)
            maps.append(drop.cpu().numpy())
    elif method == "gradcam":
        from monai.visualize import GradCAM

        if not target_layer:
            raise ValueError("Grad-CAM needs target_layer (a module name of the model, e.g. 'features.denseblock3')")
        cam = GradCAM(nn_module=model, target_layers=target_layer)
        with torch.no_grad():
            out = model(images[:1])
        class_idx = 1 if out.shape[1] > 1 else 0
        for i in range(images.shape[0]):
            maps.append(cam(images[i:i + 1], class_idx=class_idx)[0, 0].detach().cpu().numpy())
    else:
        raise ValueError(f"unknown saliency method {method!r} (occlusion, gradcam)")
    out_maps = []
    for m in maps:
        m = np.nan_to_num(np.asarray(m, dtype=np.float64))
        top = m.max()
        out_maps.append(m / top if top > 0 else m)
    return np.stack(out_maps), scores.cpu().numpy().astype(np.float64)


def share_in_mask(saliency: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the saliency mass inside ``mask`` (same spatial shape); None without saliency."""
    total = float(saliency.sum())
    if total <= 0:
        return None
    return float(saliency[np.asarray(mask, dtype=bool)].sum() / total)


def _middle(volume: np.ndarray) -> np.ndarray:
    return volume if volume.ndim == 2 else volume[volume.shape[0] // 2]


def _figure(image: np.ndarray, cand: np.ndarray, champ: np.ndarray, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.3))
    shown = _middle(image)
    for ax, (name, sal) in zip(axes, (("image", None), ("candidate", cand), ("champion", champ))):
        ax.imshow(shown, cmap="gray")
        if sal is not None:
            ax.imshow(_middle(sal), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _sample(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` indices, half positive and half negative where the split allows, in a seeded order."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels).astype(int)
    pos, neg = rng.permutation(np.flatnonzero(y == 1)), rng.permutation(np.flatnonzero(y == 0))
    take_pos = min(len(pos), max(n - len(neg), (n + 1) // 2))
    chosen = list(pos[:take_pos]) + list(neg[:n - take_pos])
    return sorted(int(i) for i in chosen)


def render_explanations(candidate: nn.Module, champion: nn.Module, dataset: Dataset, out_dir: str | Path, *,
                        n_images: int = 8, method: Method = "occlusion",
                        target_layers: tuple[str, str] | None = None, mask_size: int = 8,
                        masks: Callable[[int], np.ndarray | None] | None = None, min_count: int = 10,
                        seed: int = 0, title: str = "Saliency of the candidate and the deployed model",
                        device: str | torch.device = "cpu") -> dict[str, Any]:
    """Write ``out_dir/explanations.html`` (stays at the site) and return what may leave it.

    Args:
        candidate, champion: the two models (logits ``(B, 2)`` or ``(B, 1)``).
        dataset: the site's test split, items ``(image (C, *spatial), label)``.
        out_dir: a folder in the site's own workspace (created if needed).
        target_layers: ``(candidate layer, champion layer)`` for Grad-CAM.
        masks: index -> anatomical mask of the image's spatial shape (or None), for the in-mask share.
        min_count: ``k``: the in-mask shares leave only when at least ``k`` shown images had a mask.

    Returns:
        ``{"candidate": {"n_images", "n_masked", "saliency_in_mask"}, "champion": {...}}``, the share
        present only with ``n_masked >= k``: each model's part goes under its root of the site's
        validation report (``candidate|explanations|...``). Numbers only, nothing per image.
    """
    n_items = len(cast(Sized, dataset))  # a map-style Dataset with __len__ (torch's base class declares none)
    labels = [int(torch.as_tensor(dataset[i][1])) for i in range(n_items)]
    chosen = _sample(labels, min(n_images, n_items), seed)
    layers = target_layers or (None, None)
    cards: list[str] = []
    shares: dict[str, list[float]] = {"candidate": [], "champion": []}
    for i in chosen:
        image = torch.as_tensor(dataset[i][0])[None].to(device)
        maps, scores = {}, {}
        for role, model, layer in (("candidate", candidate, layers[0]), ("champion", champion, layers[1])):
            m, s = saliency_maps(model.to(device), image, method=method, target_layer=layer, mask_size=mask_size)
            maps[role], scores[role] = m[0], float(s[0])
        mask = masks(i) if masks else None
        if mask is not None:
            for role in shares:
                share = share_in_mask(maps[role], mask)
                if share is not None:
                    shares[role].append(share)
        caption = (f"label: {'positive' if labels[i] else 'negative'} | candidate P(positive) {scores['candidate']:.2f}"
                   f" | champion {scores['champion']:.2f}")
        png = _figure(image[0].cpu().numpy().mean(0), maps["candidate"], maps["champion"], caption)
        cards.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{png}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}figure{margin:1em 0}"
            "img{max-width:100%}figcaption{font-size:13px;color:#444}.warn{color:#a00}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='warn'>This page shows patient images. It stays at this site "
            "and is never sent anywhere.</p>"
            f"<p>{len(chosen)} test images, method: {html.escape(method)} (warmer colours: regions that raise the "
            "model's probability of a positive finding).</p>" + "".join(cards) + "</body></html>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PAGE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(page)
    summary: dict[str, Any] = {}
    for role, values in shares.items():
        summary[role] = {"n_images": len(chosen), "n_masked": len(values)}
        if len(values) >= min_count:
            summary[role]["saliency_in_mask"] = float(np.mean(values))
    return summary

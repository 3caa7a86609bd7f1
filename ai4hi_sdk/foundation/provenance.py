"""Provenance card of a backbone pretrained by the consortium, and its export.

:func:`backbone_card` gathers what a reader of the backbone needs to trust it: the architecture,
which sites contributed how many images, epochs and rounds, the privacy spent per site
(epsilon, delta; ``None`` = not private), and the sha256 of the weights file.
:func:`export_pretrained_backbone` turns a masked-autoencoder state into a backbone folder
(``backbone.safetensors`` + ``provenance.json`` with the card inside) and writes the card as
Markdown next to it. Only aggregates appear: counts per site, never per-image information.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.checkpoint import PROVENANCE_FILE, Provenance, conform_state, save_backbone
from ai4hi_sdk.foundation.presets import resolve_backbone

CARD_FILE = "BACKBONE_CARD.md"


def backbone_card(*, arch: str | Mapping[str, Any], site_images: Mapping[str, int | None], rounds: int,
                  local_epochs: int, sha256: str, epsilon: Mapping[str, float | None] | None = None,
                  delta: float | None = None, version: str = "1",
                  method: str = "masked autoencoding (MONAI MaskedAutoEncoderViT)",
                  masking_ratio: float | None = None, modality: str | None = None,
                  final_loss: float | None = None, job_id: str | None = None,
                  images_total: int | None = None,
                  client_dp: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The provenance card of a pretrained backbone (a JSON-able dict).

    Args:
        arch: preset name or mapping of the backbone.
        site_images: site name -> training images it pretrained on (labelled or not); ``None`` where
            the count was not revealed (secure aggregation: only the total is known).
        rounds, local_epochs: federated rounds and local epochs per round.
        sha256: hash of ``backbone.safetensors``.
        epsilon: site name -> epsilon spent by pretraining (``None`` or missing: not private).
        delta: the DP delta the epsilons are stated at.
        final_loss: the consortium's training loss in the last round (masked reconstruction, or
            the contrastive loss of image-report pretraining).
        images_total: the total over sites (default: the sum of ``site_images``; required when a
            count is ``None``).
        client_dp: client-level DP of the rounds (``clip``, ``noise_multiplier``, optionally the
            consortium's ``epsilon`` and ``delta``): it bounds one *site's* influence, not one
            patient's, and is stated apart from the per-site DP-SGD epsilons.

    Raises:
        UserError: no sites, a negative image count, or a malformed sha256.
    """
    if not site_images:
        raise UserError("a backbone card needs at least one contributing site")
    if any(n is not None and int(n) < 0 for n in site_images.values()):
        raise UserError("image counts must be >= 0")
    if images_total is None:
        if any(n is None for n in site_images.values()):
            raise UserError("a backbone card with unrevealed per-site counts needs images_total")
        images_total = sum(int(n) for n in site_images.values() if n is not None)  # none is None here
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
        raise UserError(f"not a sha256 hex digest: {sha256!r}")
    eps = {site: (None if epsilon is None else epsilon.get(site)) for site in sorted(site_images)}
    private = [v for v in eps.values() if v is not None and math.isfinite(v)]
    return {
        "kind": "pretrained backbone",
        "version": str(version),
        "method": method,
        "arch": arch if isinstance(arch, str) else dict(arch),
        "arch_config": resolve_backbone(arch),
        "modality": modality,
        "masking_ratio": masking_ratio,
        "sites": {site: {"images": None if site_images[site] is None else int(site_images[site]),  # type: ignore[arg-type]
                         "epsilon": eps[site]} for site in sorted(site_images)},
        "site_count": len(site_images),
        "images_total": int(images_total),
        "rounds": int(rounds),
        "local_epochs": int(local_epochs),
        "epochs_total": int(rounds) * int(local_epochs),
        "differential_privacy": bool(private),
        "epsilon_max": max(private) if private else None,
        "delta": delta if private else None,
        "client_level_dp": {k: float(v) for k, v in client_dp.items()} if client_dp else None,
        "final_loss": final_loss,
        "sha256": sha256.lower(),
        "job_id": job_id,
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card as a short Markdown page."""
    title = card["arch"] if isinstance(card["arch"], str) else "custom ViT"
    method = card["method"] + (f", masking ratio {card['masking_ratio']}" if card.get("masking_ratio") else "")
    privacy = (f"DP-SGD, epsilon up to {card['epsilon_max']:.2f} at delta {card['delta']}"
               if card["differential_privacy"] else "no patient-level DP")
    client = card.get("client_level_dp")
    if client:
        booked = (f", epsilon {client['epsilon']:.2f}" + (f" at delta {client['delta']}" if "delta" in client else "")
                  if "epsilon" in client else "")
        privacy += (f"; client-level DP (each site's update clipped to L2 norm {client.get('clip')}, noise multiplier "
                    f"{client.get('noise_multiplier')}{booked}): bounds one site's influence, not one patient's")
    elif not card["differential_privacy"]:
        privacy = "not differentially private"
    training = (f"{card['rounds']} rounds x {card['local_epochs']} local epochs "
                f"({card['epochs_total']} epochs in all)")
    lines = [f"# Backbone card: {title} (version {card['version']})", "",
             f"* method: {method}",
             f"* modality: {card.get('modality') or 'not stated'}",
             f"* training: {training}",
             f"* images: {card['images_total']} at {card['site_count']} sites",
             f"* privacy: {privacy}",
             f"* sha256 of backbone.safetensors: `{card['sha256']}`", "",
             "| site | images | epsilon |", "|---|---|---|"]
    for site, row in card["sites"].items():
        eps = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        images = "not revealed (secure aggregation)" if row["images"] is None else row["images"]
        lines.append(f"| {site} | {images} | {eps} |")
    return "\n".join(lines) + "\n"


def export_pretrained_backbone(mae_state: Mapping[str, torch.Tensor], arch: str | Mapping[str, Any],
                               out_dir: str | Path, *, overwrite: bool = False, **card_fields: Any) -> Provenance:
    """Write the encoder of a pretrained MAE as a backbone folder with its card.

    ``mae_state`` is the MAE's full state dict (or already the encoder's); ``card_fields`` are
    :func:`backbone_card`'s arguments other than ``arch`` and ``sha256``. The card is stored in
    ``provenance.json`` (``card``) and as ``BACKBONE_CARD.md``; returns the provenance record.
    """
    from ai4hi_sdk.foundation.architectures import build_backbone
    from ai4hi_sdk.foundation.mae import encoder_state, looks_like_mae

    config = resolve_backbone(arch)
    state = encoder_state(mae_state, int(config["num_layers"])) if looks_like_mae(mae_state) else dict(mae_state)
    with torch.random.fork_rng(devices=[]):
        reference = build_backbone(config).state_dict()
    state, _ = conform_state(state, reference, where="pretrained MAE state")
    provenance = Provenance(arch=arch if isinstance(arch, str) else dict(arch), arch_config=config, sha256="",
                            kind="pretrained", source="ai4hi federated pretraining", licence="consortium")
    provenance = save_backbone(state, out_dir, provenance, overwrite=overwrite)
    provenance.card = backbone_card(arch=arch, sha256=provenance.sha256, **card_fields)
    # the record is rewritten with the card; the weights file (and so the sha256) is unchanged
    Path(out_dir, PROVENANCE_FILE).write_text(json.dumps(provenance.to_dict(), indent=2, sort_keys=True) + "\n")
    Path(out_dir, CARD_FILE).write_text(card_markdown(provenance.card))
    return provenance

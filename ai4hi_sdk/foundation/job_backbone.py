"""The output of a federated pretraining job (``task: pretrain``): the global MAE's encoder as a
versioned backbone with its provenance card, written by the server at the end of the job.

Pure (torch, no NVFlare): :func:`export_job_backbone` takes the job's trainer (model only), the
final global state (the exchanged tensors) and the server's round record, and reads everything
the card states from that record:

* images per site: the FedAvg weight each site sent (its train-split images); under secure
  aggregation only the total is known, and the card says so instead of inventing per-site counts;
* epsilon per site: the ``dp_epsilon`` each site reported with its last update (always in the
  clear): the site's total on its dataset after this job, as its ledger composes every job;
* rounds completed, local epochs, masking ratio, modalities, the final validation loss.

The tensors a pretraining round does not exchange (frozen tokens, position embeddings) are the
seeded values every site and the server share, so rebuilding the full MAE from the seed plus the
global state is exact.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ai4hi_sdk.foundation.provenance import export_pretrained_backbone
from ai4hi_sdk.trainers.state import load_exchanged_state


def _completed(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in record.get("rounds", []) if r.get("status") == "completed"]


def site_images(record: Mapping[str, Any]) -> tuple[dict[str, int | None], int]:
    """``(site -> training images or None where not revealed, total)`` from the last completed round."""
    rounds = _completed(record)
    if not rounds:
        raise ValueError("no completed round: there is no pretrained backbone to export")
    last = rounds[-1]
    if last.get("weights"):
        weights = {site: int(n) for site, n in last["weights"].items()}
        return dict(weights), sum(weights.values())
    sites = sorted(last.get("sites") or {})
    return {site: None for site in sites}, int(last.get("total_weight") or 0)


def site_epsilons(record: Mapping[str, Any]) -> tuple[dict[str, float | None], float | None]:
    """``(site -> the latest dp_epsilon it reported, delta)``; a site that reported none maps to None."""
    eps: dict[str, float | None] = {}
    delta = None
    for rnd in _completed(record):
        for site, metrics in (rnd.get("sites") or {}).items():
            eps.setdefault(site, None)
            if metrics and metrics.get("dp_epsilon") is not None:
                eps[site] = float(metrics["dp_epsilon"])
                if metrics.get("dp_delta") is not None:
                    delta = float(metrics["dp_delta"])
    return eps, delta


def client_dp_card(spec: Any, epsilon: Mapping[str, float | None], delta: float | None) -> dict[str, float] | None:
    """The client-level DP a job applied (``privacy.client_dp``): clip, noise multiplier and, where
    the sites reported it, the largest epsilon their ledgers booked (at ``delta``); None without it."""
    cdp = spec.privacy.client_dp
    if cdp is None:
        return None
    out = {"clip": float(cdp.clip), "noise_multiplier": float(cdp.noise_multiplier)}
    booked = [e for e in epsilon.values() if e is not None]
    if booked and cdp.noise_multiplier > 0:
        out["epsilon"] = max(booked)
        if delta is not None:
            out["delta"] = float(delta)
    return out


def export_job_backbone(trainer: Any, global_state: Mapping[str, torch.Tensor], record: Mapping[str, Any],
                        out_dir: str | Path, *, job_id: str) -> dict[str, Any]:
    """Write ``out_dir/{backbone.safetensors, provenance.json, BACKBONE_CARD.md}`` from a finished
    pretraining job; returns what the job record keeps about it (folder name, sha256, version, card).

    Args:
        trainer: the job's :class:`~ai4hi_sdk.foundation.trainers.MAEPretrainTrainer` or, for
            ``method: image_report``, :class:`~ai4hi_sdk.foundation.image_report.ImageReportTrainer`
            (model only; its image encoder becomes the backbone).
        global_state: the final global model (the trainer's exchanged tensors).
        record: the server's round record (``rounds``, ``final_validation``).
        job_id: the job's id (in the card).
    """
    spec = trainer.spec
    load_exchanged_state(trainer.model, global_state, trainer.exchanged_names())
    images, total = site_images(record)
    epsilon, delta = site_epsilons(record)
    modalities = spec.model.get("modalities") or spec.data.modalities or ["CR", "DX"]
    final_loss = ((record.get("final_validation") or {}).get("weighted_mean") or {}).get("val_loss")
    version = f"{spec.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    common = dict(site_images=images, images_total=total, rounds=len(_completed(record)),
                  local_epochs=spec.train.local_epochs, version=version,
                  modality="/".join(modalities if not isinstance(modalities, str) else [modalities]),
                  final_loss=float(final_loss) if final_loss is not None else None, job_id=job_id)
    if spec.method == "image_report":
        # client-level DP only: no patient-level epsilon per site; the sites' ledgers booked the
        # client-level spend, which the card states with the mechanism
        provenance = trainer.export_backbone(trainer.model, out_dir, overwrite=True,
                                             client_dp=client_dp_card(spec, epsilon, delta), **common)
    else:
        provenance = export_pretrained_backbone(
            trainer.mae_state(), spec.model.get("backbone", "vit-micro-2d"), out_dir, overwrite=True,
            epsilon={s: epsilon.get(s) for s in images}, delta=delta,
            masking_ratio=float(spec.model.get("masking_ratio", 0.75)), **common)
    return {"folder": Path(out_dir).name, "sha256": provenance.sha256, "version": version, "card": provenance.card}

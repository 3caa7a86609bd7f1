"""Lineage of a model that adapts a backbone: backbone (sha256) -> adapter (the job's exchanged
tensors) -> deployed version. The lead's side: read from the job spec and the backbone's
provenance record; the continuous loop puts it into each model's history entry and each decision
it signs, and the model cards show it (:mod:`ai4hi_sdk.reports.lineage`).
"""

from __future__ import annotations

import json
from typing import Any

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.jobs.builder import base_checkpoint
from ai4hi_sdk.site.backbones import PROVENANCE_FILE


def backbone_lineage(spec: JobSpec) -> dict[str, Any] | None:
    """``{"backbone_sha256", "backbone_kind", "backbone_version", "backbone_source", "backbone_arch",
    "adaptation"}`` of a job on a base checkpoint (None without one). ``backbone_version`` is the
    pretraining card's version (None for an imported checkpoint); ``adaptation`` the job's mode
    (``ffa_lora`` when the spec names none, as the trainer defaults). Raises UserError like
    :func:`~ai4hi_sdk.jobs.builder.base_checkpoint`."""
    found = base_checkpoint(spec)
    if found is None:
        return None
    folder, sha = found
    record = json.loads((folder / PROVENANCE_FILE).read_text())
    card = record.get("card") or {}
    adaptation = spec.model.get("adaptation") or "ffa_lora"
    mode = adaptation if isinstance(adaptation, str) else adaptation.get("mode", "ffa_lora")
    return {"backbone_sha256": sha, "backbone_kind": record.get("kind"), "backbone_version": card.get("version"),
            "backbone_source": record.get("source"), "backbone_arch": record.get("arch"), "adaptation": mode}

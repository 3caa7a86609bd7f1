"""A model card's lineage section: backbone sha256 -> adapter (model) sha256 -> deployed version.

Pure (dicts in, dicts and Markdown lines out). Reads the loop's ``history.json``: the model's
``lineage`` entry (written by the continuous loop for a job on a base checkpoint) and the
decisions that deployed it.
"""

from __future__ import annotations

from typing import Any


def card_lineage(history: dict, model: str) -> dict[str, Any] | None:
    """The lineage of ``model`` for its card, or None when it adapts no backbone.

    ``deployed``: the decisions (stage, decision log entry) after which ``model`` was the deployed
    version; empty when it never was.
    """
    info = history.get("models", {}).get(model, {})
    lineage = info.get("lineage")
    if not lineage:
        return None
    deployed = [{"stage": s.get("stage"), "log_seq": s.get("log_seq"), "decision": s.get("decision")}
                for s in history.get("steps", [])
                if s.get("kind") == "decision" and s.get("deployed_after") == model and s.get("candidate") == model]
    return {**lineage, "model": model, "adapter_sha256": info.get("sha256"), "parent": info.get("parent"),
            "deployed": deployed}


def lineage_markdown(lineage: dict[str, Any] | None) -> list[str]:
    """Markdown lines of :func:`card_lineage` (none without a lineage)."""
    if not lineage:
        return []
    version = f", version {lineage['backbone_version']}" if lineage.get("backbone_version") else ""
    source = f" from {lineage['backbone_source']}" if lineage.get("backbone_source") else ""
    deployed = "; ".join(f"{d['decision']} at {d['stage']} (decision log entry {d['log_seq']})"
                         for d in lineage["deployed"]) or "not deployed"
    return ["", "## Lineage", "",
            f"* backbone: `{lineage['backbone_sha256']}` ({lineage.get('backbone_kind') or 'unknown'}{version}{source}; "
            "each site verified its own copy by this sha256 before training)",
            f"* adapter: `{lineage['adapter_sha256']}` ({lineage['adaptation']}: only these tensors were trained and "
            f"exchanged{', warm-started from ' + lineage['parent'] if lineage.get('parent') else ''})",
            f"* deployed as `{lineage['model']}`: {deployed}"]

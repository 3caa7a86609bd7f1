"""Matplotlib figures of the report, each returned as a base64 PNG (headless ``Agg`` backend).

Inputs are the aggregates sites sent (validation records, drift reports); nothing per study.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def forest_plot(validation: dict[str, dict], pooled: dict | None, title: str, metric_label: str = "AUROC") -> str:
    """Per-site candidate-minus-champion AUROC with its CI (and the pooled estimate), base64 PNG."""
    rows = [(site, rep["paired"]) for site, rep in sorted(validation.items()) if "delta" in rep.get("paired", {})]
    if pooled:
        rows.append(("pooled (random effects)", {"delta": pooled["estimate"], "ci": pooled["ci"]}))
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * max(len(rows), 1) + 1.2))
    for i, (name, p) in enumerate(rows):
        y = len(rows) - 1 - i
        colour = "tab:purple" if name.startswith("pooled") else "tab:blue"
        ax.errorbar(p["delta"], y, xerr=[[p["delta"] - p["ci"][0]], [p["ci"][1] - p["delta"]]], fmt="D" if
                    name.startswith("pooled") else "o", color=colour, capsize=4)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in reversed(rows)])
    ax.set_xlabel(f"{metric_label} change, candidate - champion (95 % CI)")
    ax.set_title(title)
    return _png(fig)


def subgroup_gap_plot(validation: dict[str, dict], title: str, metric: str = "auroc") -> str:
    """Largest subgroup gap of ``metric`` per site and attribute, champion vs candidate, base64 PNG."""
    from ai4hi_sdk.validation.subgroups import audit_cells, subgroup_gaps

    labels, champ, cand = [], [], []
    for site, rep in sorted(validation.items()):
        g_cand = subgroup_gaps(audit_cells(rep["candidate"].get("subgroups", {})), metric)
        g_champ = subgroup_gaps(audit_cells(rep["champion"].get("subgroups", {})), metric)
        for attr in sorted(set(g_cand) | set(g_champ)):
            labels.append(f"{site}\n{attr}")
            champ.append(g_champ.get(attr) or 0.0)
            cand.append(g_cand.get(attr) or 0.0)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 1.5), 3.4))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], champ, 0.4, label="champion", color="tab:gray")
    ax.bar([i + 0.2 for i in x], cand, 0.4, label="candidate", color="tab:orange")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel(f"max - min subgroup {metric}")
    ax.set_title(title + " (0 = fewer than two shown cells)")
    ax.legend(fontsize=8)
    return _png(fig)


def calibration_plot(validation: dict[str, dict], title: str) -> str:
    """Reliability curves per site (candidate solid, champion dashed; bins under k not shown)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (site, rep) in enumerate(sorted(validation.items())):
        for role, style in (("candidate", "-o"), ("champion", "--s")):
            bins = rep[role].get("calibration", {}).get("bins", [])
            if bins:
                ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], style,
                        color=colours[i % len(colours)], ms=4, label=f"{site} {role}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed fraction positive")
    ax.set_title(title)
    ax.legend(fontsize=6)
    return _png(fig)


def drift_plot(monitors: list[tuple[str, dict[str, dict]]]) -> str:
    """-log10 of each site's smallest drift p-value over monitoring runs, with its alarm level."""
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    sites = sorted({s for _, drift in monitors for s in drift})
    for site in sites:
        xs, ys = [], []
        for i, (_, drift) in enumerate(monitors):
            report = drift.get(site)
            if report and report.get("tests"):
                p = min(t["p_value"] for t in report["tests"].values())
                xs.append(i)
                ys.append(-math.log10(max(p, 1e-300)))
        ax.plot(xs, ys, "-o", label=site)
    levels = [r["corrected_alpha"] for _, d in monitors for r in d.values() if "corrected_alpha" in r]
    if levels:
        ax.axhline(-math.log10(min(levels)), color="red", ls="--", lw=1, label="alarm level (Bonferroni)")
    ax.set_xticks(range(len(monitors)))
    ax.set_xticklabels([name for name, _ in monitors], fontsize=8)
    ax.set_ylabel("-log10 smallest p-value")
    ax.set_title("drift over time")
    ax.legend(fontsize=7)
    return _png(fig)


def drift_tests_plot(drift: dict[str, dict], title: str) -> str:
    """-log10 p-value of every drift test per site for one monitoring run."""
    sites = sorted(drift)
    tests = sorted({t for r in drift.values() for t in r.get("tests", {})})
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(tests) + 2), 3.4))
    width = 0.8 / max(len(sites), 1)
    for j, site in enumerate(sites):
        ys = [-math.log10(max(drift[site]["tests"].get(t, {}).get("p_value", 1.0), 1e-300)) for t in tests]
        ax.bar([i + j * width for i in range(len(tests))], ys, width, label=site)
    levels: list[float] = [r["corrected_alpha"] for r in drift.values() if r.get("corrected_alpha")]
    if levels:
        ax.axhline(-math.log10(min(levels)), color="red", ls="--", lw=1, label="alarm level")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tests))])
    ax.set_xticklabels(tests, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("-log10 p-value")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _png(fig)


def net_benefit_plot(curves: dict[str, dict[str, list[float]]], title: str) -> str:
    """Decision curves: net benefit per study of the model at each site and pooled (solid), treat-all
    (dashed, pooled) and treat-none (0), over the policy's threshold probabilities."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, c) in enumerate(sorted(curves.items(), key=lambda kv: (kv[0] == "pooled", kv[0]))):
        pooled = name == "pooled"
        ax.plot(c["thresholds"], c["model"], "-o" if pooled else "-", color="black" if pooled else colours[i % 10],
                lw=2.2 if pooled else 1.2, ms=3, label=f"{name}: model")
    if "pooled" in curves:
        ax.plot(curves["pooled"]["thresholds"], curves["pooled"]["treat_all"], "--", color="tab:red",
                label="pooled: treat all")
    ax.axhline(0, color="grey", lw=1, label="treat none")
    lows = [min(c["model"] + c["treat_all"]) for c in curves.values()]
    highs = [max(c["model"] + c["treat_all"]) for c in curves.values()]
    if lows:
        ax.set_ylim(max(min(lows), -0.05) - 0.02, max(highs) + 0.05)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit per study")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _png(fig)


def robustness_plot(panels: dict[str, dict[str, dict]], title: str) -> str:
    """Change of the score under each perturbation, per site: candidate (filled) vs champion (hatched)."""
    rows = [(site, role, panel) for site, by_role in sorted(panels.items()) for role, panel in sorted(by_role.items())
            if panel and not panel.get("suppressed") and panel.get("perturbations")]
    labels = sorted({k for _, _, p in rows for k in p["perturbations"]})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 3.6))
    width = 0.8 / max(len(rows), 1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sites = sorted(panels)
    for j, (site, role, panel) in enumerate(rows):
        ys = [panel["perturbations"].get(k, {}).get("delta", 0.0) for k in labels]
        ax.bar([i + j * width for i in range(len(labels))], ys, width, color=colours[sites.index(site) % 10],
               hatch=None if role == "candidate" else "//", edgecolor="black", lw=0.3, label=f"{site} {role}")
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score change vs clean")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _png(fig)

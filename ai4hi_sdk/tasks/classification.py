"""Binary classification of images: AUROC evidence at each model's operating point.

* site report: :func:`~ai4hi_sdk.validation.site_report.site_validation_report` (AUROC with DeLong
  CI, sensitivity / specificity and confusion counts at the model version's operating point, ECE,
  Brier, calibration before and after recalibration, subgroup audit, net-benefit counts, the paired
  DeLong AUROC change);
* evidence: AUROC (higher is better) with the operating point's counts, ECE and subgroup sensitivity
  gaps, so the policy's safety floors apply;
* capabilities: operating points, drift monitoring (reference features saved at validation),
  site-local explanation pages; robustness panel on AUROC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ai4hi_sdk.tasks.base import ROLES, DataKind, ReportSettings, TaskStrategy, SitePredictions, card_subgroups
from ai4hi_sdk.validation.scores import AUROC, ScoreMetric

if TYPE_CHECKING:
    from ai4hi_sdk.validation.decision import SiteEvidence


def operating_counts(model_report: dict) -> dict[str, int] | None:
    """``{"tp", "positives", "tn", "negatives"}`` of a model's site report at its threshold: the sent
    counts, or (reports of SDKs that sent only rates) rates times class counts; None if absent."""
    n, pos = model_report.get("n"), model_report.get("positives")
    if n is None or pos is None:
        return None
    neg = int(n) - int(pos)
    tp, tn = model_report.get("tp"), model_report.get("tn")
    if tp is None:
        sens = model_report.get("sensitivity")
        tp = 0 if pos == 0 else (None if sens is None else round(float(sens) * int(pos)))
    if tn is None:
        spec = model_report.get("specificity")
        tn = 0 if neg == 0 else (None if spec is None else round(float(spec) * neg))
    if tp is None or tn is None:
        return None
    return {"tp": int(tp), "positives": int(pos), "tn": int(tn), "negatives": neg}


def operating_point_fields(report: dict) -> dict[str, Any]:
    """``candidate_*`` / ``champion_*`` counts, ECE and threshold of a site report (evidence fields)."""
    out: dict[str, Any] = {}
    for role in ROLES:
        r = report.get(role, {})
        out[f"{role}_counts"] = operating_counts(r)
        out[f"{role}_ece"] = r.get("ece")
        out[f"{role}_threshold"] = r.get("threshold")
    return out


def _num(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{float(x):.{digits}f}"


def _auroc_ci(rep: dict) -> str:
    from ai4hi_sdk.reports.render import fmt

    ci = rep.get("auroc_ci")
    return f"{fmt(rep.get('auroc'))} ({fmt(ci[0])}–{fmt(ci[1])})" if ci else fmt(rep.get("auroc"))


class ClassificationTask(TaskStrategy):
    """The default kind: its reports carry no ``meta`` marker (nor did those of older SDK versions)."""

    name: ClassVar[str] = "classification"
    metric: ClassVar[ScoreMetric | None] = AUROC
    report_columns = (("auroc", "AUROC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
                      ("ece", "ECE"), ("brier", "Brier"))
    undefined_note = "AUROC undefined (one class in its test split)"
    data_kind: ClassVar[DataKind] = "image"
    site_files = ("labels.csv",)
    summary_columns = ("val_auroc", "val_accuracy", "val_loss", "val_samples")
    supports_operating_point = True
    supports_drift_monitoring = True
    supports_explanations = True

    def robustness_scorer(self) -> Any:
        from ai4hi_sdk.validation.robustness import AUROC_SCORER

        return AUROC_SCORER

    def site_report(self, test: SitePredictions, settings: ReportSettings) -> dict:
        """Each model at its own operating point (the server's, else the job's fixed threshold)."""
        from ai4hi_sdk.validation.site_report import site_validation_report

        cfg, ops = settings.config, settings.operating_points
        cand_op, champ_op = ops.get("candidate", {}), ops.get("champion", {})
        report = site_validation_report(
            test.truth, test.candidate, test.champion, test.attributes,
            threshold=cand_op.get("threshold", cfg.threshold), champion_threshold=champ_op.get("threshold", cfg.threshold),
            candidate_calibration=cand_op.get("calibration"), champion_calibration=champ_op.get("calibration"),
            net_benefit_thresholds=cfg.net_benefit_thresholds, min_count=settings.min_count, ci=cfg.ci,
            calibration_bins=cfg.calibration_bins, dp_count_epsilon=cfg.dp_count_epsilon, seed=cfg.seed)
        report["meta"]["calibration_bins"] = cfg.calibration_bins
        report["meta"]["operating_points_from_server"] = {role: int(role in ops) for role in ROLES}
        return report

    def site_evidence(self, site: str, report: dict, *, notes: list[str], drift_alarm: bool = False,
                      gap_metric: str | None = None) -> "SiteEvidence | None":
        """DeLong paired AUROC change, with each model's counts, ECE and threshold at its operating
        point and the subgroup AUROC and sensitivity gaps."""
        from ai4hi_sdk.validation.decision import SiteEvidence
        from ai4hi_sdk.validation.subgroups import audit_cells

        paired, cand, champ = report.get("paired", {}), report.get("candidate", {}), report.get("champion", {})
        if "delta" not in paired or "auroc" not in cand or "auroc" not in champ:
            notes.append(f"site {site} left out: {self.undefined_note}")
            return None
        return SiteEvidence.from_results(
            site,
            {"n": paired["n"], "auroc_candidate": cand["auroc"], "auroc_champion": champ["auroc"],
             "delta": paired["delta"], "ci": paired["ci"], "variance": paired["variance"]},
            candidate_audit=audit_cells(cand.get("subgroups", {})) or None,
            champion_audit=audit_cells(champ.get("subgroups", {})) or None,
            gap_metric=gap_metric or "auroc", drift_alarm=drift_alarm, **operating_point_fields(report))

    def card_site(self, report: dict) -> dict:
        cand, paired = report["candidate"], report.get("paired", {})
        return {"n": cand.get("n"), "auroc": cand.get("auroc"), "auroc_ci": cand.get("auroc_ci"),
                "sensitivity": cand.get("sensitivity"), "specificity": cand.get("specificity"),
                "threshold": cand.get("threshold"), "ece": cand.get("ece"), "brier": cand.get("brier"),
                "auroc_change_vs_champion": paired.get("delta"), "auroc_change_ci": paired.get("ci"),
                **card_subgroups(cand)}

    def card_markdown(self, validation: dict) -> list[str]:
        from ai4hi_sdk.reports.render import fmt
        from ai4hi_sdk.tasks.base import subgroup_card_rows

        lines = ["| site | n | AUROC (95 % CI) | change vs champion (95 % CI) | sensitivity | specificity | ECE | Brier |",
                 "|---|---|---|---|---|---|---|---|"]
        for site, s in validation["sites"].items():
            ci = s.get("auroc_change_ci") or [None, None]
            lines.append(f"| {site} | {s['n']} | {_auroc_ci(s)} | {fmt(s['auroc_change_vs_champion'])} "
                         f"({fmt(ci[0])}–{fmt(ci[1])}) | {fmt(s['sensitivity'])} | {fmt(s['specificity'])} | "
                         f"{fmt(s['ece'])} | {fmt(s['brier'])} |")
        lines += ["", f"Subgroups (cells with fewer than k={validation['k']} studies are suppressed and not named):", "",
                  "| site | attribute | group | n | AUROC | sensitivity | specificity |", "|---|---|---|---|---|---|---|"]
        return lines + subgroup_card_rows(validation, ("auroc", "sensitivity", "specificity"))

    def report_html(self, validation: dict[str, dict], pooled: dict | None) -> list[str]:
        """AUROC table, forest plot, subgroup gaps, calibration, and the clinical sections (operating
        point, net benefit, robustness, explanations)."""
        from ai4hi_sdk.reports import clinical, plots
        from ai4hi_sdk.reports.render import fmt, html_figure, html_table

        rows = []
        for site, rep in sorted(validation.items()):
            for role in ROLES:
                r = rep[role]
                rows.append([site, role, fmt(r.get("n")), _auroc_ci(r), fmt(r.get("sensitivity")),
                             fmt(r.get("specificity")), fmt(r.get("ece")), fmt(r.get("brier"))])
        parts = [html_table(["site", "model", "n", "AUROC (95 % CI)", "sensitivity", "specificity", "ECE", "Brier"],
                            rows)]
        if any("delta" in rep.get("paired", {}) for rep in validation.values()):
            parts.append(html_figure(plots.forest_plot(validation, pooled, "per-site AUROC change"),
                                     "forest plot: per-site AUROC change"))
        if validation:
            parts.append(html_figure(plots.subgroup_gap_plot(validation, "subgroup AUROC gaps"), "subgroup gaps"))
            parts.append(html_figure(plots.calibration_plot(validation, "calibration"), "calibration curves"))
        return parts + clinical.validation_clinical_html(validation)

    def site_line(self, report: dict) -> str:
        c = report["candidate"]
        ece_before = (c.get("calibration_summary") or {}).get("before", {}).get("ece")
        return (super().site_line(report) + f"; at its operating point sensitivity {_num(c.get('sensitivity'))}, "
                f"specificity {_num(c.get('specificity'))}, ECE {_num(ece_before)} -> {_num(c.get('ece'))} recalibrated")

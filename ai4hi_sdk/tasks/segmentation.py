"""Binary segmentation of volumes: mean Dice evidence, HD95 in the cases' own millimetres.

* data: CT series assembled into volumes by geometry, masks in ``masks/<SeriesInstanceUID>.npy|.npz``;
* site report: :func:`~ai4hi_sdk.validation.segmentation_site.site_segmentation_report` (mean Dice,
  mean HD95, subgroup audit, paired t interval of the mean Dice change; ``meta.segmentation = 1``);
* evidence: mean Dice (higher is better), no operating point (the safety floors do not apply);
* capabilities: robustness panel on Dice; no operating point, drift monitoring or explanations.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ai4hi_sdk.tasks.base import ROLES, DataKind, ReportSettings, TaskStrategy, SitePredictions, card_subgroups
from ai4hi_sdk.validation.scores import DICE, ScoreMetric


class SegmentationTask(TaskStrategy):
    name: ClassVar[str] = "segmentation"
    metric: ClassVar[ScoreMetric | None] = DICE
    report_columns = (("dice", "mean Dice"), ("hd95", "mean HD95"))
    report_marker = "segmentation"
    undefined_note = "mean Dice change undefined (fewer than 2 test cases with a lesion)"
    data_kind: ClassVar[DataKind] = "volume"
    site_files = ("labels.csv", "masks/<SeriesInstanceUID>.npy|.npz")
    summary_columns = ("val_dice", "val_hd95", "val_loss", "val_samples")

    def robustness_scorer(self) -> Any:
        from ai4hi_sdk.validation.robustness import DICE_SCORER

        return DICE_SCORER

    def test_context(self, trainer: Any) -> dict[str, Any]:
        """The test cases' voxel spacing (mm), when the trainer knows it (``test_spacing()``): HD95
        is then in millimetres, else in voxels."""
        spacing = getattr(trainer, "test_spacing", None)
        return {"spacing": spacing() if callable(spacing) else None}

    def owns_report(self, report: Mapping[str, Any]) -> bool:
        from ai4hi_sdk.validation.segmentation_site import is_segmentation_report

        return is_segmentation_report(report)

    def site_report(self, test: SitePredictions, settings: ReportSettings) -> dict:
        from ai4hi_sdk.validation.segmentation_site import site_segmentation_report

        cfg = settings.config
        return site_segmentation_report(test.truth, test.candidate, test.champion, test.attributes,
                                        min_count=settings.min_count, ci=cfg.ci, spacing=test.context.get("spacing"),
                                        dp_count_epsilon=cfg.dp_count_epsilon, seed=cfg.seed)

    def card_site(self, report: dict) -> dict:
        cand, paired = report["candidate"], report.get("paired", {})
        return {"n": cand.get("n"), "dice": cand.get("dice"), "hd95": cand.get("hd95"),
                "dice_undefined": cand.get("dice_undefined"), "hd95_undefined": cand.get("hd95_undefined"),
                "hd95_in_mm": bool(report.get("meta", {}).get("hd95_in_mm")),
                "dice_change_vs_champion": paired.get("delta"), "dice_change_ci": paired.get("ci"),
                **card_subgroups(cand)}

    def card_markdown(self, validation: dict) -> list[str]:
        """Dice / HD95 table (HD95 in mm or voxels) and the subgroup cells."""
        from ai4hi_sdk.reports.render import fmt
        from ai4hi_sdk.tasks.base import subgroup_card_rows

        lines = ["| site | n | mean Dice | mean HD95 | change in Dice vs champion (95 % CI) |", "|---|---|---|---|---|"]
        for site, s in validation["sites"].items():
            ci = s.get("dice_change_ci") or [None, None]
            unit = " mm" if s.get("hd95_in_mm") else " voxels"
            lines.append(f"| {site} | {s['n']} | {fmt(s['dice'])} | {fmt(s['hd95'])}{unit} | "
                         f"{fmt(s['dice_change_vs_champion'])} ({fmt(ci[0])}–{fmt(ci[1])}) |")
        lines += ["", f"Subgroups (cells with fewer than k={validation['k']} cases are suppressed and not named):", "",
                  "| site | attribute | group | n | Dice | HD95 |", "|---|---|---|---|---|---|"]
        return lines + subgroup_card_rows(validation, ("dice", "hd95"))

    def report_html(self, validation: dict[str, dict], pooled: dict | None) -> list[str]:
        """Dice / HD95 table and plots (no calibration: a mask has no probability)."""
        from ai4hi_sdk.reports import plots
        from ai4hi_sdk.reports.render import fmt, html_figure, html_table

        rows = []
        for site, rep in sorted(validation.items()):
            for role in ROLES:
                r = rep[role]
                rows.append([site, role, fmt(r.get("n")), fmt(r.get("dice")), fmt(r.get("hd95")),
                             fmt(r.get("dice_undefined")), fmt(r.get("hd95_undefined"))])
        parts = [html_table(["site", "model", "n", "mean Dice", "mean HD95", "Dice undefined", "HD95 undefined"], rows)]
        if any("delta" in rep.get("paired", {}) for rep in validation.values()):
            parts.append(html_figure(plots.forest_plot(validation, pooled, "per-site Dice change",
                                                       metric_label="mean Dice"), "forest plot: per-site Dice change"))
        parts.append(html_figure(plots.subgroup_gap_plot(validation, "subgroup Dice gaps", metric="dice"),
                                 "subgroup gaps"))
        return parts

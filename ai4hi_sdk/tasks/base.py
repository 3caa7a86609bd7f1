"""The task strategy: everything that differs between task kinds, behind one small class (pure core).

A job's ``task`` (``classification``, ``segmentation``, ...) names a :class:`TaskStrategy`
(:func:`ai4hi_sdk.tasks.registry.task_strategy`). The rest of the SDK asks it instead of comparing
strings:

* **data**: ``data_kind`` (``"image"``: one item per DICOM image; ``"volume"``: series assembled by
  geometry) and ``site_files`` (what a site holds besides ``dicom/``);
* **training summary**: ``summary_columns``, the per-site metrics ``ai4hi job simulate`` shows;
* **site report**: :meth:`TaskStrategy.site_report` turns both models' test-split predictions
  (:class:`SitePredictions`, in memory at the site) into aggregates only, roots ``candidate``,
  ``champion``, ``paired``, ``meta``; :meth:`~TaskStrategy.test_context` reads what else the
  trainer knows about the test split (voxel spacing...); ``robustness_scorer`` scores the
  robustness panel;
* **evidence**: ``metric`` (a :class:`~ai4hi_sdk.validation.scores.ScoreMetric`: name, label,
  direction) and :meth:`~TaskStrategy.site_evidence`, one site's report as the decision engine's
  :class:`~ai4hi_sdk.validation.decision.SiteEvidence` (score, paired change and its interval);
* **cards and report**: :meth:`~TaskStrategy.card_site`, :meth:`~TaskStrategy.card_markdown`,
  :meth:`~TaskStrategy.report_html`, :meth:`~TaskStrategy.site_line`;
* **capabilities**: ``supports_operating_point`` (a threshold on scores, chosen on the validation
  splits), ``supports_drift_monitoring``, ``supports_explanations``.

Only :meth:`~TaskStrategy.site_report` must be written for a new kind; evidence, card and report
sections have defaults built on ``metric`` and ``report_columns`` (see ``docs/developer.md``,
"A new task kind"). A strategy computes what leaves a site, so it is part of the SDK a site
installed, never of a job's code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Sequence

from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.validation.scores import ScoreMetric

if TYPE_CHECKING:
    from ai4hi_sdk.config.validation_spec import ValidationSpec
    from ai4hi_sdk.validation.decision import SiteEvidence

#: the two models of a validation, in the order reports list them
ROLES = ("candidate", "champion")
#: what one data item is: a DICOM image (2D) or a volume assembled from a series
DataKind = Literal["image", "volume"]


@dataclass
class SitePredictions:
    """Both models' predictions on one site's fixed test split (in memory at the site, never sent).

    Attributes:
        truth: the reference, in the task's form (labels ``(n,)``, masks, values ``(n,)``...).
        candidate / champion: each model's predictions, in the form ``predict_test`` returns.
        attributes: subgroup attribute -> ``n`` category strings (sex, age band, manufacturer).
        context: what :meth:`TaskStrategy.test_context` read from the trainer (e.g. ``spacing``).
    """

    truth: Any
    candidate: Any
    champion: Any
    attributes: Mapping[str, Sequence[str]]
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportSettings:
    """How a site computes its report: the job's validation settings, the k to suppress with (the
    larger of the job's and the site policy's) and the server's operating points (checked, by role)."""

    config: "ValidationSpec"
    min_count: int
    operating_points: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def subgroup_card_rows(validation: dict, metrics: Sequence[str]) -> list[str]:
    """Markdown rows ``| site | attribute | group | n | <metrics> |`` of one validation's subgroup
    cells (model-card form), plus one row per attribute saying how many cells were suppressed."""
    from ai4hi_sdk.reports.render import fmt

    lines = []
    for site, s in validation["sites"].items():
        for attr, cells in s["subgroups"].items():
            for group, c in cells.items():
                lines.append(f"| {site} | {attr} | {group} | {c.get('n')} | "
                             + " | ".join(fmt(c.get(m)) for m in metrics) + " |")
            hidden = s["suppressed_subgroup_cells"].get(attr, 0)
            if hidden:
                lines.append(f"| {site} | {attr} | ({hidden} suppressed) | " + " | ".join(["–"] * (len(metrics) + 1))
                             + " |")
    return lines


def card_subgroups(model_report: dict) -> dict[str, Any]:
    """A model report's subgroup cells and suppressed-cell counts, as model cards hold them."""
    groups = model_report.get("subgroups", {})
    return {"subgroups": {a: d.get("cells", {}) for a, d in groups.items()},
            "suppressed_subgroup_cells": {a: d.get("suppressed_cells", 0) for a, d in groups.items()}}


class TaskStrategy(ABC):
    """What a task kind decides (see the module docstring). Subclass, set the class attributes,
    write :meth:`site_report`, register an instance with
    :func:`~ai4hi_sdk.tasks.registry.register_task`."""

    #: the job spec's ``task``
    name: ClassVar[str]
    #: the score the decision engine compares (None: jobs of this kind are not validated)
    metric: ClassVar[ScoreMetric | None] = None
    #: per-model entries of a site report shown in cards and the HTML report: ``(key, label)``
    report_columns: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: the numeric ``meta`` flag that marks this kind's site reports (None: the default kind)
    report_marker: ClassVar[str | None] = None
    #: why a site is left out of the evidence when its paired change is undefined
    undefined_note: ClassVar[str] = "the paired change is undefined on its test split"
    data_kind: ClassVar[DataKind] = "image"
    #: what a site holds besides ``dicom/`` (for messages and docs)
    site_files: ClassVar[tuple[str, ...]] = ("labels.csv",)
    #: per-site columns of a training run's summary (names in ``metrics.json``'s final validation)
    summary_columns: ClassVar[tuple[str, ...]] = ("val_loss", "val_samples")
    supports_operating_point: ClassVar[bool] = False
    supports_drift_monitoring: ClassVar[bool] = False
    supports_explanations: ClassVar[bool] = False

    # ------------------------------------------------------------------ site side
    def test_context(self, trainer: Any) -> dict[str, Any]:
        """What else the site report needs from the trainer about its test split (default: nothing)."""
        return {}

    def robustness_scorer(self) -> Any:
        """The :class:`~ai4hi_sdk.validation.robustness.RobustnessScorer` of this kind's models
        (None: no robustness panel)."""
        return None

    @abstractmethod
    def site_report(self, test: SitePredictions, settings: ReportSettings) -> dict:
        """Nested aggregate report of the candidate vs the champion on one site's test split:
        ``{"candidate": {...}, "champion": {...}, "paired": {"n", "delta", "ci", "variance"} |
        {"undefined": 1.0}, "meta": {"k", "ci", ...}}``; numbers only, nothing per case, every
        cell under ``settings.min_count`` suppressed."""

    def owns_report(self, report: Mapping[str, Any]) -> bool:
        """Whether a (unflattened) site report is of this kind (its ``meta`` marker is set)."""
        return self.report_marker is not None and bool((report.get("meta") or {}).get(self.report_marker))

    # ------------------------------------------------------------------ evidence
    def validated_metric(self) -> ScoreMetric:
        """``metric``, or a :class:`ConfigError` for a kind whose jobs are not validated."""
        if self.metric is None:
            raise ConfigError("task", [("task", f"{self.name} jobs are not validated against a champion")])
        return self.metric

    def site_evidence(self, site: str, report: dict, *, notes: list[str], drift_alarm: bool = False,
                      gap_metric: str | None = None) -> "SiteEvidence | None":
        """One site's report as decision evidence on ``metric`` (None, with a note, when the paired
        change is undefined there). The subgroup gap is the largest ``gap_metric`` (default: the
        score) difference between shown cells."""
        from ai4hi_sdk.validation.decision import SiteEvidence
        from ai4hi_sdk.validation.subgroups import audit_cells, max_gap

        m = self.validated_metric()
        paired, cand, champ = report.get("paired", {}), report.get("candidate", {}), report.get("champion", {})
        if "delta" not in paired or m.name not in cand or m.name not in champ:
            notes.append(f"site {site} left out: {self.undefined_note}")
            return None
        gap = gap_metric or m.name
        cand_audit = audit_cells(cand.get("subgroups", {}))
        champ_audit = audit_cells(champ.get("subgroups", {}))
        return SiteEvidence(site=site, n=int(paired["n"]), metric=m.name, candidate_score=cand[m.name],
                            champion_score=champ[m.name], score_delta=paired["delta"],
                            score_delta_ci=tuple(paired["ci"]), score_delta_variance=paired.get("variance"),
                            candidate_subgroup_gap=max_gap(cand_audit, gap) if cand_audit else None,
                            champion_subgroup_gap=max_gap(champ_audit, gap) if champ_audit else None,
                            drift_alarm=drift_alarm)

    # ------------------------------------------------------------------ cards and report
    def card_site(self, report: dict) -> dict:
        """One site's entry in a model card: the candidate's figures and its change vs the champion."""
        m = self.validated_metric()
        cand, paired = report["candidate"], report.get("paired", {})
        return {"n": cand.get("n"), **{key: cand.get(key) for key, _ in self.report_columns},
                f"{m.name}_change_vs_champion": paired.get("delta"), f"{m.name}_change_ci": paired.get("ci"),
                **card_subgroups(cand)}

    def card_markdown(self, validation: dict) -> list[str]:
        """Markdown of one validation in a model card (``validation``: the card's entry)."""
        from ai4hi_sdk.reports.render import fmt

        m = self.validated_metric()
        keys, labels = [k for k, _ in self.report_columns], [label for _, label in self.report_columns]
        lines = ["| site | n | " + " | ".join(labels) + f" | change in {m.label} vs champion (95 % CI) |",
                 "|---|---|" + "---|" * len(labels) + "---|"]
        for site, s in validation["sites"].items():
            ci = s.get(f"{m.name}_change_ci") or [None, None]
            lines.append(f"| {site} | {s['n']} | " + " | ".join(fmt(s.get(k)) for k in keys)
                         + f" | {fmt(s.get(f'{m.name}_change_vs_champion'))} ({fmt(ci[0])}–{fmt(ci[1])}) |")
        lines += ["", f"Subgroups (cells with fewer than k={validation['k']} cases are suppressed and not named):", "",
                  "| site | attribute | group | n | " + " | ".join(labels) + " |",
                  "|---|---|---|---|" + "---|" * len(labels)]
        return lines + subgroup_card_rows(validation, keys)

    def report_html(self, validation: dict[str, dict], pooled: dict | None) -> list[str]:
        """HTML parts of one validation in the report (``validation``: site -> report; ``pooled``: the
        decision's random-effects pooled change, if any)."""
        from ai4hi_sdk.reports import plots
        from ai4hi_sdk.reports.render import fmt, html_figure, html_table

        m = self.validated_metric()
        rows = [[site, role, fmt(rep[role].get("n")), *[fmt(rep[role].get(k)) for k, _ in self.report_columns]]
                for site, rep in sorted(validation.items()) for role in ROLES]
        parts = [html_table(["site", "model", "n", *[label for _, label in self.report_columns]], rows)]
        if any("delta" in rep.get("paired", {}) for rep in validation.values()):
            parts.append(html_figure(plots.forest_plot(validation, pooled, f"per-site {m.label} change",
                                                       metric_label=m.label), f"forest plot: per-site {m.label} change"))
        parts.append(html_figure(plots.subgroup_gap_plot(validation, f"subgroup {m.label} gaps", metric=m.name),
                                 "subgroup gaps"))
        return parts

    def site_line(self, report: dict) -> str:
        """One line of progress for a site's report: the score of both models and the change."""
        m = self.validated_metric()
        cand, champ, paired = report.get("candidate", {}), report.get("champion", {}), report.get("paired", {})
        nan = float("nan")
        lo, hi = paired.get("ci") or [nan, nan]
        return (f"n={cand.get('n')} {m.label} {cand.get(m.name, nan):.3f} (champion {champ.get(m.name, nan):.3f}, "
                f"change {paired.get('delta', nan):+.3f} [{lo:+.3f}, {hi:+.3f}])")

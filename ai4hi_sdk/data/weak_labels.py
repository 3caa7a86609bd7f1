"""Weak labels from reports, at the site: one finding's label per study, and its agreement with
hand labels.

A job with ``data.labels_from: reports`` names a finding (``report_finding``) and a labeler rule-set
version (``labeler_version``); each study's report is labelled with those rules
(:mod:`~ai4hi_sdk.data.labeler`) and the finding's assertion becomes the study's class:

* ``positive`` -> 1, ``negative`` -> 0;
* not mentioned in a non-empty report -> 0 (a radiologist mentions what is there);
* ``uncertain`` -> as the job says (``uncertain``): dropped (``ignore``), 1 or 0;
* no report, or an empty one -> no label (the study is left out and counted).

:func:`label_agreement` compares the weak labels with the hand labels a site may also have
(``labels.csv``). Only its aggregates may leave the site, and only over at least the site's k
studies (the site runtime decides); per-study labels never leave.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ai4hi_sdk.data.labeler import Assertion, RuleSet, label_report
from ai4hi_sdk.data.reports import ReportJoin

UncertainPolicy = Literal["ignore", "positive", "negative"]
#: metric names of the agreement, as the site sends them (see ai4hi_sdk.jobs.wire)
AGREEMENT_STUDIES, AGREEMENT, AGREEMENT_KAPPA = "weak_label_studies", "weak_label_agreement", "weak_label_kappa"


@dataclass
class WeakLabels:
    """Per-study weak labels of one finding (site-local).

    ``labels`` maps StudyInstanceUID -> 0 / 1; ``assertions`` counts the finding's assertion per
    report (``positive``, ``negative``, ``uncertain``, ``unmentioned``); ``dropped_uncertain``
    studies were uncertain under ``uncertain: ignore``; ``no_report`` studies had none (or an empty one).
    """

    finding: str
    version: str
    uncertain: UncertainPolicy
    labels: dict[str, int] = field(default_factory=dict)
    assertions: Counter = field(default_factory=Counter)
    dropped_uncertain: list[str] = field(default_factory=list)
    no_report: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts only."""
        return {"finding": self.finding, "labeler_version": self.version, "uncertain": self.uncertain,
                "labelled_studies": len(self.labels), "positive_studies": sum(self.labels.values()),
                "assertions": dict(sorted(self.assertions.items())),
                "dropped_uncertain": len(self.dropped_uncertain), "no_report": len(self.no_report)}


def weak_labels(join: ReportJoin, rules: RuleSet, finding: str, uncertain: UncertainPolicy = "ignore",
                studies: list[str] | None = None) -> WeakLabels:
    """Label ``finding`` in every study's report (``studies``: default every scanned study).

    Raises:
        ValueError: ``finding`` is not one of the rule set's findings.
    """
    if finding not in rules.findings:
        raise ValueError(f"finding {finding!r} is not in labeler rule set {rules.version} "
                         f"(it labels: {', '.join(rules.finding_names)})")
    out = WeakLabels(finding, rules.version, uncertain)
    wanted = studies if studies is not None else sorted(set(join.reports) | set(join.missing_studies)
                                                         | set(join.empty_studies))
    for study in wanted:
        report = join.reports.get(study)
        if report is None:
            out.no_report.append(study)
            continue
        assertion: Assertion | None = label_report(report.text, rules).get(finding)
        out.assertions[assertion or "unmentioned"] += 1
        if assertion == "positive":
            out.labels[study] = 1
        elif assertion in (None, "negative"):
            out.labels[study] = 0
        elif uncertain == "ignore":
            out.dropped_uncertain.append(study)
        else:
            out.labels[study] = 1 if uncertain == "positive" else 0
    return out


@dataclass(frozen=True)
class LabelAgreement:
    """Weak vs hand labels over the ``studies`` that have both (site-local until the runtime's k check).

    ``agreement``: fraction of those studies whose labels are equal; ``kappa``: Cohen's kappa
    (NaN when both raters use one class only: then it is undefined, and not sent).
    """

    studies: int
    agreement: float
    kappa: float

    def metrics(self) -> dict[str, float]:
        """The names and values the site runtime may send (finite values only)."""
        out = {AGREEMENT_STUDIES: float(self.studies), AGREEMENT: self.agreement, AGREEMENT_KAPPA: self.kappa}
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}


def label_agreement(weak: Mapping[str, int], hand: Mapping[str, int]) -> LabelAgreement:
    """Agreement of two binary labelings over the keys they share (studies with both labels)."""
    keys = sorted(set(weak) & set(hand))
    n = len(keys)
    if n == 0:
        return LabelAgreement(0, math.nan, math.nan)
    agree = sum(1 for k in keys if int(weak[k]) == int(hand[k])) / n
    p_weak = sum(int(weak[k]) for k in keys) / n
    p_hand = sum(int(hand[k]) for k in keys) / n
    expected = p_weak * p_hand + (1 - p_weak) * (1 - p_hand)
    kappa = (agree - expected) / (1 - expected) if expected < 1 else math.nan
    return LabelAgreement(n, agree, kappa)

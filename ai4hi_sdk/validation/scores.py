"""What the score in a site's evidence is: its name, label, task kind and direction (pure core).

A :class:`~ai4hi_sdk.validation.decision.SiteEvidence` names its score with ``metric`` (``"auroc"``,
``"dice"``, ...). The decision engine reads here which way is better and whether the evidence comes
at an operating point (confusion counts, ECE: the safety floors apply). The built-in kinds' metrics
are defined here; a new task kind registers its own through
:func:`ai4hi_sdk.tasks.registry.register_task`, which calls :func:`register_score_metric`.

An unknown metric is an error, never a guess: :func:`score_metric` raises, so no decision is made
on evidence whose direction is not known (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreMetric:
    """One kind of per-site score.

    Attributes:
        name: the key in a model's site report and in ``SiteEvidence.metric`` (``"auroc"``).
        label: how reports and decision reasons write it (``"AUROC"``).
        task: the task kind whose evidence it is (``"classification"``).
        higher_is_better: False for an error (MAE): the candidate must then lower it.
        operating_point: the evidence comes at a model's operating point (threshold, confusion
            counts, ECE), so the policy's safety floors apply to it.
    """

    name: str
    label: str
    task: str
    higher_is_better: bool = True
    operating_point: bool = False

    def improvement(self, delta: float) -> float:
        """``delta`` (candidate minus champion) as a gain: positive when the candidate is better."""
        return delta if self.higher_is_better else -delta

    def worse_than(self, score: float, limit: float) -> bool:
        """Whether ``score`` is on the bad side of ``limit`` (below a floor, or above a ceiling)."""
        return score < limit if self.higher_is_better else score > limit


#: binary classification: AUROC, DeLong paired interval; evidence at each model's operating point
AUROC = ScoreMetric("auroc", "AUROC", "classification", operating_point=True)
#: binary segmentation: mean Dice over cases with a lesion, paired t interval
DICE = ScoreMetric("dice", "Dice", "segmentation")

_METRICS: dict[str, ScoreMetric] = {m.name: m for m in (AUROC, DICE)}


def register_score_metric(metric: ScoreMetric) -> None:
    """Make ``metric`` known to the decision engine (again registering the same one is a no-op;
    another definition under a known name is a ValueError: a direction never changes silently)."""
    known = _METRICS.get(metric.name)
    if known is not None and known != metric:
        raise ValueError(f"score metric {metric.name!r} is already registered as {known}")
    _METRICS[metric.name] = metric


def score_metric(name: str) -> ScoreMetric:
    """The registered metric called ``name``; ValueError naming the known ones otherwise."""
    try:
        return _METRICS[name]
    except KeyError:
        raise ValueError(f"evidence metric {name!r} is not registered (known: {', '.join(sorted(_METRICS))}); "
                         "register its task kind before deciding on it") from None

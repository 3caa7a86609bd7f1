"""The registry: built-in kinds by name, a one-line error listing the known kinds for an unknown one,
no silent replacement of a kind or of a score's direction, and the kind of a site report read from
its marker (reports of older SDK versions included)."""

from __future__ import annotations

import pytest

from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.tasks.base import ReportSettings, SitePredictions, TaskStrategy
from ai4hi_sdk.tasks.classification import ClassificationTask
from ai4hi_sdk.tasks.registry import (
    DEFAULT_TASK,
    known_tasks,
    register_task,
    strategy_for_report,
    strategy_for_reports,
    task_strategy,
)
from ai4hi_sdk.validation.scores import DICE, ScoreMetric, score_metric


@pytest.fixture
def fresh(monkeypatch):
    """The registry and the score table as they are, restored after the test."""
    from ai4hi_sdk.tasks import registry
    from ai4hi_sdk.validation import scores

    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    monkeypatch.setattr(scores, "_METRICS", dict(scores._METRICS))


class Ranking(TaskStrategy):
    name = "ranking"
    metric = ScoreMetric("ndcg", "nDCG", "ranking")
    report_marker = "ranking"

    def site_report(self, test: SitePredictions, settings: ReportSettings) -> dict:
        return {"meta": {"ranking": 1}}


def test_the_built_in_kinds_are_registered():
    assert set(known_tasks()) == {"classification", "segmentation", "pretrain"}
    assert task_strategy("segmentation").data_kind == "volume" and task_strategy("classification").data_kind == "image"
    assert task_strategy(DEFAULT_TASK).name == "classification"


def test_an_unknown_kind_is_a_one_line_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError) as err:
        task_strategy("clasification")
    message = str(err.value)
    assert "\n" not in message
    assert message == "task: unknown task kind 'clasification' (known: classification, pretrain, segmentation)"
    assert err.value.problems == [("task", message.removeprefix("task: "))]


def test_registering_a_kind_makes_it_and_its_score_known(fresh):
    with pytest.raises(ValueError, match="'ndcg' is not registered"):
        score_metric("ndcg")
    register_task(Ranking())
    assert task_strategy("ranking").name == "ranking" and "ranking" in known_tasks()
    assert score_metric("ndcg").label == "nDCG"
    assert strategy_for_report({"meta": {"ranking": 1}}).name == "ranking"
    register_task(Ranking())  # the same kind again: no-op


def test_no_kind_or_direction_is_replaced_silently(fresh):
    class OtherSegmentation(Ranking):
        name = "segmentation"

    with pytest.raises(ValueError, match="already registered"):
        register_task(OtherSegmentation())
    assert task_strategy("segmentation").metric == DICE

    class LowerDice(Ranking):
        name = "dice_error"
        metric = ScoreMetric("dice", "Dice", "segmentation", higher_is_better=False)

    with pytest.raises(ValueError, match="'dice' is already registered"):
        register_task(LowerDice())
    assert score_metric("dice").higher_is_better and "dice_error" not in known_tasks()

    class BadName(Ranking):
        name = "Not A Name"

    with pytest.raises(ValueError, match="lower-case"):
        register_task(BadName())


def test_the_kind_of_a_site_report():
    assert strategy_for_report({"meta": {"segmentation": 1}, "candidate": {}}).name == "segmentation"
    # a segmentation report without the meta flag (older SDK) is still recognised by its Dice
    assert strategy_for_report({"candidate": {"dice": 0.8}}).name == "segmentation"
    assert strategy_for_report({"meta": {"k": 10}, "candidate": {"auroc": 0.8}}).name == "classification"
    assert strategy_for_report({}).name == DEFAULT_TASK
    seg, cls = {"meta": {"segmentation": 1}}, {"candidate": {"auroc": 0.7}}
    assert strategy_for_reports([seg, seg]).name == "segmentation"
    assert strategy_for_reports([seg, cls]).name == DEFAULT_TASK  # mixed: the default, as before
    assert strategy_for_reports([]).name == DEFAULT_TASK


def test_the_job_spec_names_a_registered_kind(tmp_path):
    from ai4hi_sdk.jobs.spec import load_checked_job_spec

    job = tmp_path / "job.yaml"
    job.write_text("name: x\ntask: regresion\n")
    with pytest.raises(ConfigError) as err:
        load_checked_job_spec(job)
    assert str(job) in str(err.value) and "task: unknown task kind 'regresion' (known: classification" in str(err.value)
    job.write_text("name: x\ntask: Not-A-Name\n")
    with pytest.raises(ConfigError, match="task"):
        load_checked_job_spec(job)


def test_only_the_classification_kind_has_operating_points_and_drift_monitoring():
    able = {name: (task_strategy(name).supports_operating_point, task_strategy(name).supports_drift_monitoring,
                   task_strategy(name).supports_explanations) for name in known_tasks()}
    assert able == {"classification": (True, True, True), "segmentation": (False, False, False),
                    "pretrain": (False, False, False)}
    assert isinstance(task_strategy("classification"), ClassificationTask)

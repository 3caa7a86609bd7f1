"""Task kinds by name: ``task_strategy("segmentation")`` -> its :class:`~ai4hi_sdk.tasks.base.TaskStrategy`.

The built-in kinds (classification, segmentation, pretrain) are registered here; a new kind is one
module with a :class:`~ai4hi_sdk.tasks.base.TaskStrategy` subclass, registered with
:func:`register_task` (which also makes its score known to the decision engine,
:func:`~ai4hi_sdk.validation.scores.register_score_metric`). The site computes its validation
report with the strategy its own SDK has registered under the job's ``task``: a job cannot bring one.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.tasks.base import TaskStrategy
from ai4hi_sdk.tasks.classification import ClassificationTask
from ai4hi_sdk.tasks.pretrain import PretrainTask
from ai4hi_sdk.tasks.segmentation import SegmentationTask
from ai4hi_sdk.validation.scores import register_score_metric

#: the kind of a job spec that names none, and of site reports no kind claims
DEFAULT_TASK = "classification"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TASKS: dict[str, TaskStrategy] = {}


class UnknownTaskKind(ConfigError):
    """``task`` names no registered kind; the one-line message lists the known ones."""

    def __init__(self, name: str):
        reason = f"unknown task kind {name!r} (known: {', '.join(known_tasks())})"
        super().__init__("task", [("task", reason)])
        self.args = (f"task: {reason}",)


def register_task(strategy: TaskStrategy) -> TaskStrategy:
    """Register ``strategy`` under ``strategy.name`` (and its score metric); returns it. Registering
    an instance of the same class again is a no-op; another class under a known name is a ValueError."""
    name = getattr(strategy, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a task kind's name is lower-case letters, digits and _, got {name!r}")
    known = _TASKS.get(name)
    if known is not None and type(known) is not type(strategy):
        raise ValueError(f"task kind {name!r} is already registered ({type(known).__name__})")
    if strategy.metric is not None:
        register_score_metric(strategy.metric)
    _TASKS[name] = strategy
    return strategy


def task_strategy(name: str) -> TaskStrategy:
    """The strategy of task kind ``name``; :class:`UnknownTaskKind` (a ConfigError) otherwise."""
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise UnknownTaskKind(str(name)) from None


def known_tasks() -> tuple[str, ...]:
    return tuple(sorted(_TASKS))


def strategy_for_report(report: Mapping[str, Any]) -> TaskStrategy:
    """The kind of one site report: the registered kind whose marker it carries, else the default."""
    return next((s for s in _TASKS.values() if s.owns_report(report)), _TASKS[DEFAULT_TASK])


def strategy_for_reports(reports: Iterable[Mapping[str, Any]]) -> TaskStrategy:
    """The kind of one validation's site reports: theirs if they agree, else the default."""
    kinds = {strategy_for_report(r).name for r in reports}
    return _TASKS[kinds.pop()] if len(kinds) == 1 else _TASKS[DEFAULT_TASK]


for _builtin in (ClassificationTask(), SegmentationTask(), PretrainTask()):
    register_task(_builtin)

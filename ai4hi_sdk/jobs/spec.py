"""Load a job spec the way the lead's tools need it: schema, code files, and a trainer that imports."""

from __future__ import annotations

from pathlib import Path

from ai4hi_sdk.config.job_spec import JobSpec, load_job_spec
from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.tasks.registry import UnknownTaskKind, task_strategy
from ai4hi_sdk.trainers.loading import TrainerNotFound, trainer_class_for


def load_checked_job_spec(path: str | Path) -> JobSpec:
    """:func:`~ai4hi_sdk.config.job_spec.load_job_spec` plus: ``task`` is a registered task kind and
    the trainer imports and is a ``SiteTrainer`` (ConfigError naming the field otherwise)."""
    spec = load_job_spec(path)
    try:
        task_strategy(spec.task)
    except UnknownTaskKind as err:
        raise ConfigError(str(path), err.problems) from None
    try:
        trainer_class_for(spec)
    except TrainerNotFound as err:
        raise ConfigError(str(path), [("trainer", str(err))]) from None
    return spec

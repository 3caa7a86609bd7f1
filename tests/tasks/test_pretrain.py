"""The pretrain kind trains a backbone: images, a loss column in the summary, and no validation."""

from __future__ import annotations

import pytest

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.tasks.base import ReportSettings, SitePredictions
from ai4hi_sdk.tasks.registry import task_strategy

TASK = task_strategy("pretrain")


def test_pretraining_reads_images_and_is_not_validated():
    assert TASK.data_kind == "image" and TASK.summary_columns == ("val_loss", "val_samples") and TASK.metric is None
    with pytest.raises(ConfigError, match="not validated"):
        TASK.site_report(SitePredictions([], [], [], {}), ReportSettings(ValidationSpec(), 10))
    with pytest.raises(ConfigError, match="not validated"):
        TASK.site_evidence("A", {}, notes=[])


def test_a_validation_job_of_a_pretraining_spec_is_refused_when_built(tmp_path):
    from ai4hi_sdk.jobs.builder import Ai4hiValidationRecipe

    spec = JobSpec(name="mae", task="pretrain")
    with pytest.raises(ConfigError, match="not validated"):
        Ai4hiValidationRecipe(spec, ValidationSpec(), tmp_path, champion={}, candidate={})

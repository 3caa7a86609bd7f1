"""Self-supervised pretraining (``task: pretrain``): a job kind that trains a backbone, not a model
that is validated against a champion.

It reads 2D images (labels, if any, are not used) and its training summary shows the masked
reconstruction loss; it has no evidence, operating point, drift monitoring or robustness panel. A
validation job of a pretraining spec is refused: validate the job that adapts the backbone.
"""

from __future__ import annotations

from typing import ClassVar

from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.tasks.base import DataKind, ReportSettings, TaskStrategy, SitePredictions


class PretrainTask(TaskStrategy):
    name: ClassVar[str] = "pretrain"
    data_kind: ClassVar[DataKind] = "image"
    site_files = ("labels.csv (optional: pretraining uses no labels)",)
    summary_columns = ("val_loss", "val_samples")

    def site_report(self, test: SitePredictions, settings: ReportSettings) -> dict:
        raise ConfigError("task", [("task", "a pretraining job trains a backbone and is not validated against a "
                                            "champion: validate the job that adapts it")])

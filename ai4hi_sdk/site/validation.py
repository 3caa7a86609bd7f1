"""Site side of an ai4hi validation / monitoring job (part of the site-owned runtime).

The site runtime builds the job's trainer class (the same one that trains) and calls
:class:`ValidationSite` for two tasks:

* ``ai4hi_cross_validate``: the task carries the candidate's and the champion's weights (tensor
  names prefixed ``candidate/`` and ``champion/``). The site predicts its fixed test split with both
  (:meth:`SiteTrainer.predict_test`), reduces the predictions to aggregates
  (:func:`~ai4hi_sdk.validation.site_report.site_validation_report`) and sends them as a flat
  METRICS payload. It also saves, locally, the drift reference of each model (features of its
  current images and the model's outputs on them).
* ``ai4hi_monitor``: the task carries the deployed model (``model/``). The site recomputes the
  drift features on its current data and sends only the tests' statistics and p-values.

Per-study predictions, features and references never leave the site; the site's egress guard
logs every payload that does. Every cell and split is k-suppressed with k at least the site
policy's ``min_count`` (a job may ask for a larger k, never a smaller one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.privacy.egress import model_sha256
from ai4hi_sdk.validation.monitoring import (
    DriftFeatures,
    compare_features,
    drift_report,
    header_and_intensity_features,
    model_output_features,
    reference_path,
)
from ai4hi_sdk.validation.site_report import site_validation_report

VALIDATION_FILE = "ai4hi_validation.json"


class ValidationSite:
    """Framework-free site logic of the validation job (NVFlare only calls it).

    Args:
        trainer: the job's trainer (a :class:`~ai4hi_sdk.trainers.site_trainer.SiteTrainer`) with its
            site data folder and workspace.
        config: validation settings.
        min_count: the k to suppress with: the larger of the job's and the site policy's floor.
    """

    def __init__(self, trainer: Any, config: ValidationSpec, min_count: int | None = None):
        self.trainer = trainer
        self.config = config
        self.min_count = max(config.min_count, min_count or 0)
        self._base: tuple[Any, DriftFeatures] | None = None  # (dataset of all images, model-free features)

    # ------------------------------------------------------------------ drift features
    def _dicom_items(self) -> list:
        """Every DICOM item of the trainer's splits (empty for a trainer on other data: no drift
        reference is kept then, and monitoring refuses)."""
        splits = self.trainer.datasets
        return [it for part in (splits.train, splits.val, splits.test) for it in getattr(part, "items", [])]

    def _all_images_dataset(self) -> Any:
        from ai4hi_sdk.data.dataset import DicomClassificationDataset

        items = self._dicom_items()
        if not items:
            raise ValueError("the trainer's datasets have no DICOM items to monitor")
        return DicomClassificationDataset(items, image_size=self.trainer.spec.data.image_size, augment=False)

    def current_features(self, state: Mapping[str, torch.Tensor]) -> DriftFeatures:
        """Metadata, intensity and model-output features of every current image (stay local)."""
        from ai4hi_sdk.trainers.state import load_exchanged_state

        if self._base is None:  # headers and pixels are read once per job, whatever the number of models
            dataset = self._all_images_dataset()
            self._base = (dataset, header_and_intensity_features([it.path for it in dataset.items]))
        dataset, base = self._base
        features = DriftFeatures(categorical=dict(base.categorical), numeric=dict(base.numeric))
        load_exchanged_state(self.trainer.model, state, self.trainer.exchanged_names())
        score, embedding = model_output_features(self.trainer.model, self.trainer.loader(dataset, shuffle=False),
                                                 self.trainer.device)
        features.numeric["score"] = score
        features.embedding = embedding
        return features

    def _check_support(self, n: int) -> None:
        """A site report describes the whole test split: it needs at least k studies."""
        if n < self.min_count:
            raise RoundRefused(f"the test split has {n} studies, fewer than k = {self.min_count}: "
                               "no aggregate of it may leave this site")

    def _workspace(self) -> Path:
        if self.trainer.site_workspace is None:
            raise ValueError("no site workspace: drift references cannot be kept")
        return self.trainer.site_workspace

    # ------------------------------------------------------------------ tasks
    def cross_validate(self, candidate: Mapping[str, torch.Tensor], champion: Mapping[str, torch.Tensor]) -> dict:
        """Nested aggregate report of both models on the fixed test split; saves drift references."""
        cfg = self.config
        if self.trainer.spec.task == "segmentation":
            return self._cross_validate_segmentation(candidate, champion)
        p_cand, labels, attrs = self.trainer.predict_test(candidate)
        p_champ, labels_again, _ = self.trainer.predict_test(champion)
        assert (labels == labels_again).all()
        self._check_support(len(labels))
        attributes = {a: attrs.get(a, ["unknown"] * len(labels)) for a in cfg.attributes}
        report = site_validation_report(labels, p_cand, p_champ, attributes, threshold=cfg.threshold,
                                        min_count=self.min_count, ci=cfg.ci, calibration_bins=cfg.calibration_bins,
                                        dp_count_epsilon=cfg.dp_count_epsilon, seed=cfg.seed)
        report["meta"]["calibration_bins"] = cfg.calibration_bins
        if self.trainer.site_workspace is not None and self._dicom_items():
            for state in (candidate, champion):
                self.current_features(state).save(reference_path(self._workspace(), model_sha256(state)))
        return report

    def _cross_validate_segmentation(self, candidate: Mapping[str, torch.Tensor],
                                     champion: Mapping[str, torch.Tensor]) -> dict:
        """Segmentation: Dice / HD95 aggregates of both models' test-split masks (no drift reference:
        monitoring is classification-only)."""
        from ai4hi_sdk.validation.segmentation_site import site_segmentation_report

        cfg = self.config
        pred_cand, true, attrs = self.trainer.predict_test(candidate)
        pred_champ, _, _ = self.trainer.predict_test(champion)
        self._check_support(len(true))
        attributes = {a: attrs.get(a, ["unknown"] * len(true)) for a in cfg.attributes}
        spacing = self.trainer.test_spacing() if hasattr(self.trainer, "test_spacing") else None
        return site_segmentation_report(true, pred_cand, pred_champ, attributes, min_count=self.min_count, ci=cfg.ci,
                                        spacing=spacing, dp_count_epsilon=cfg.dp_count_epsilon, seed=cfg.seed)

    def monitor(self, deployed: Mapping[str, torch.Tensor]) -> dict:
        """Drift tests of the current data against the reference saved when ``deployed`` was validated."""
        if self.trainer.spec.task == "segmentation":
            raise ValueError("drift monitoring is classification-only in this SDK version (segmentation job)")
        sha = model_sha256(deployed)
        ref_file = reference_path(self._workspace(), sha)
        if not ref_file.exists():
            raise FileNotFoundError(f"no drift reference for model {sha[:16]} at this site: validate it here first")
        reference = DriftFeatures.load(ref_file)
        current = self.current_features(deployed)
        alarm = compare_features(reference, current, alpha=self.config.drift_alpha,
                                 n_permutations=self.config.drift_permutations, seed=self.config.seed)
        return {"drift": drift_report(alarm, reference.n, current.n)}


def read_validation_file(folder: str | Path) -> ValidationSpec:
    return ValidationSpec.model_validate(json.loads((Path(folder) / VALIDATION_FILE).read_text()))


def write_validation_file(config: ValidationSpec, folder: str | Path) -> Path:
    path = Path(folder) / VALIDATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True))
    return path

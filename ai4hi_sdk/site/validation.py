"""Site side of an ai4hi validation / monitoring job (part of the site-owned runtime).

The site runtime builds the job's trainer class (the same one that trains) and calls
:class:`ValidationSite` for two tasks:

* ``ai4hi_cross_validate``: the task carries the candidate's and the champion's weights (tensor
  names prefixed ``candidate/`` and ``champion/``). The site predicts its fixed test split with both
  (:meth:`SiteTrainer.predict_test`), reduces the predictions to aggregates with the job's task
  kind (:meth:`~ai4hi_sdk.tasks.base.TaskStrategy.site_report`: for classification
  :func:`~ai4hi_sdk.validation.site_report.site_validation_report`) and sends them as a flat
  METRICS payload. For a kind that supports drift monitoring it also saves, locally, the drift
  reference of each model (features of its current images and the model's outputs on them).
* ``ai4hi_monitor``: the task carries the deployed model (``model/``). The site recomputes the
  drift features on its current data and sends only the tests' statistics and p-values.
* ``ai4hi_operating_point``: the task carries the models whose operating point the server is
  choosing (``candidate/``, ``champion/``). The site predicts its **validation** split and sends,
  per model, per-class score histograms in the fixed logit bins, merged so that every non-empty
  bin holds at least k studies of its class
  (:func:`~ai4hi_sdk.validation.operating_point.operating_point_payload`).

In ``ai4hi_cross_validate`` the task meta may carry each model's operating point (threshold and
recalibration, chosen by the server from those histograms): the site checks it and validates each
model at its own operating point (sensitivity, specificity, confusion counts, calibration before
and after, net benefit). With the validation settings it also computes, at the site:

* a robustness panel per model (:func:`~ai4hi_sdk.validation.robustness.robustness_panel`: score
  under noise, contrast, blur and resolution changes; aggregates only, suppressed under k);
* a site-local explanation page (:func:`~ai4hi_sdk.reports.explanations.render_explanations`):
  saliency maps of both models on a sample of test images, written with mode 0600 to
  ``<site workspace>/ai4hi/explanations/<candidate sha>-vs-<champion sha>/explanations.html``.
  The page never leaves; only the number of images explained (and, with masks, the share of
  saliency inside them when at least k images had one) goes into the report.

Per-study predictions, features and references never leave the site; the site's egress guard
logs every payload that does. Every cell and split is k-suppressed with k at least the site
policy's ``min_count`` (a job may ask for a larger k, never a smaller one).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeGuard

import numpy as np
import torch

from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.errors import ConfigError, RoundRefused
from ai4hi_sdk.privacy.egress import model_sha256
from ai4hi_sdk.tasks.base import ROLES, ReportSettings, TaskStrategy, SitePredictions
from ai4hi_sdk.validation.monitoring import (
    DriftFeatures,
    compare_features,
    drift_report,
    header_and_intensity_features,
    model_output_features,
    reference_path,
)

VALIDATION_FILE = "ai4hi_validation.json"
#: folder of the site-local explanation pages, relative to the site workspace (never sent anywhere)
EXPLANATIONS_DIR = Path("ai4hi") / "explanations"


def checked_operating_points(given: Any) -> dict[str, dict[str, Any]]:
    """The server's operating points for a cross-validation, checked at the site:
    ``{role: {"threshold": t in (0, 1), "calibration": {"a" > 0, "b"} | None}}`` for roles among
    candidate/champion. Anything else is a refusal naming the field (the site does not guess)."""
    if given is None:
        return {}
    if not isinstance(given, Mapping) or not set(given) <= set(ROLES):
        raise RoundRefused(f"operating points from the server: expected roles {ROLES}, got {sorted(given)[:4]}"
                           if isinstance(given, Mapping) else "operating points from the server: not a mapping")
    out: dict[str, dict[str, Any]] = {}
    for role, op in given.items():
        threshold = op.get("threshold") if isinstance(op, Mapping) else None
        if not _finite_number(threshold) or not 0 < float(threshold) < 1:
            raise RoundRefused(f"operating points from the server: {role}.threshold must be in (0, 1)")
        calibration = op.get("calibration")
        if calibration is not None:
            a, b = (calibration.get(k) if isinstance(calibration, Mapping) else None for k in ("a", "b"))
            if not (_finite_number(a) and float(a) > 0 and _finite_number(b)):
                raise RoundRefused(f"operating points from the server: {role}.calibration needs a > 0 and a finite b")
            calibration = {"a": float(a), "b": float(b)}
        out[role] = {"threshold": float(threshold), "calibration": calibration}
    return out


def _finite_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


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
    def strategy(self) -> TaskStrategy:
        """The job's task kind as this site's SDK knows it (an unknown kind is a refusal: the site
        computes what leaves with its own code, never with the job's)."""
        from ai4hi_sdk.tasks.registry import task_strategy

        try:
            return task_strategy(self.trainer.spec.task)
        except ConfigError as err:
            raise RoundRefused(f"this site cannot validate the job: {err}") from None

    def operating_point(self, models: Mapping[str, Mapping[str, torch.Tensor]]) -> dict:
        """Per model (``candidate`` / ``champion``): k-merged per-class score histograms of its
        predictions on this site's validation split (the server sums them and chooses the threshold)."""
        from ai4hi_sdk.validation.operating_point import operating_point_payload

        if not self.strategy().supports_operating_point:
            raise RoundRefused(f"an operating point is a threshold on classification scores; this is a "
                               f"{self.trainer.spec.task} job")
        if not models or not set(models) <= set(ROLES):
            raise RoundRefused(f"the operating-point task must carry models among {ROLES}")
        out = {}
        for role, state in sorted(models.items()):
            scores, labels, _ = self.trainer.predict_validation(state)
            if len(labels) < self.min_count:
                raise RoundRefused(f"the validation split has {len(labels)} studies, fewer than k = {self.min_count}: "
                                   "no aggregate of it may leave this site")
            out[role] = operating_point_payload(scores, labels, split="validation", min_count=self.min_count)
        return out

    def cross_validate(self, candidate: Mapping[str, torch.Tensor], champion: Mapping[str, torch.Tensor],
                       operating_points: Mapping[str, Any] | None = None) -> dict:
        """Nested aggregate report of both models on the fixed test split, each at its operating point
        (``operating_points``: the server's, checked by :func:`checked_operating_points`; without one
        a model is validated at the job's fixed threshold); adds the robustness panels, writes the
        site-local explanation page and saves the drift references."""
        cfg = self.config
        strategy = self.strategy()
        ops = checked_operating_points(operating_points)
        if ops and not strategy.supports_operating_point:
            raise RoundRefused(f"operating points apply to classification scores, not to the outputs of a "
                               f"{strategy.name} model")
        pred_cand, truth, attrs = self.trainer.predict_test(candidate)
        pred_champ, truth_again, _ = self.trainer.predict_test(champion)
        assert _same(truth, truth_again), "the test split changed between the two models' predictions"
        self._check_support(len(truth))
        attributes: dict[str, Sequence[str]] = {a: attrs.get(a, ["unknown"] * len(truth)) for a in cfg.attributes}
        report = strategy.site_report(
            SitePredictions(truth, pred_cand, pred_champ, attributes, strategy.test_context(self.trainer)),
            ReportSettings(cfg, self.min_count, ops))
        scorer = strategy.robustness_scorer()
        robustness = scorer is not None and cfg.robustness
        explanations = (strategy.supports_explanations and cfg.explanation_images > 0
                        and self.trainer.site_workspace is not None)
        if robustness or explanations:  # one model per role, shared by both panels
            models = self._models({"candidate": candidate, "champion": champion})
            if robustness:
                self._add_robustness(report, models, scorer)
            if explanations:
                self._add_explanations(report, models, candidate, champion)
        if strategy.supports_drift_monitoring and self.trainer.site_workspace is not None and self._dicom_items():
            for state in (candidate, champion):
                self.current_features(state).save(reference_path(self._workspace(), model_sha256(state)))
        return report

    def _models(self, states: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.nn.Module]:
        """One model per role (copies of the trainer's model), each holding its exchanged state (a
        backbone job's models carry adapters and head only; the rest is the site's backbone)."""
        from ai4hi_sdk.trainers.state import load_exchanged_state

        names = self.trainer.exchanged_names()
        out = {}
        for role, state in states.items():
            model = copy.deepcopy(self.trainer.model)
            load_exchanged_state(model, state, names)
            out[role] = model.eval()
        return out

    def _add_robustness(self, report: dict, models: Mapping[str, torch.nn.Module], scorer: Any) -> None:
        """``report[role]["robustness"]``: each model's score under the default perturbations (k-suppressed)."""
        from ai4hi_sdk.validation.robustness import robustness_panel

        for role, model in models.items():
            try:
                panel = robustness_panel(model, self.trainer.datasets.test, task=scorer, min_count=self.min_count,
                                         batch_size=self.trainer.spec.train.batch_size, device=self.trainer.device,
                                         seed=self.config.seed)
            except Exception:  # noqa: BLE001 - extra evidence: its absence is reported as missing, not as a pass
                print(f"[ai4hi] robustness panel of the {role} failed (left out of the report):", file=sys.stderr)
                traceback.print_exc()
                continue
            report[role]["robustness"] = panel

    def _add_explanations(self, report: dict, models: Mapping[str, torch.nn.Module],
                          candidate: Mapping[str, torch.Tensor], champion: Mapping[str, torch.Tensor]) -> None:
        """Write the site-local saliency page; ``report[role]["explanations"]``: its counts only."""
        from ai4hi_sdk.reports.explanations import render_explanations

        cfg = self.config
        folder = (self._workspace() / EXPLANATIONS_DIR
                  / f"{model_sha256(candidate)[:16]}-vs-{model_sha256(champion)[:16]}")
        layers = (cfg.explanation_layer, cfg.explanation_layer) if cfg.explanation_layer else None
        summary = render_explanations(
            models["candidate"], models["champion"], self.trainer.datasets.test, folder,
            n_images=cfg.explanation_images, method=cfg.explanation_method, target_layers=layers,
            min_count=self.min_count, seed=cfg.seed, device=self.trainer.device,
            title=f"{self.trainer.site_name}: saliency of the candidate and the deployed model (this page stays here)")
        for role in ROLES:
            report[role]["explanations"] = summary[role]

    def monitor(self, deployed: Mapping[str, torch.Tensor]) -> dict:
        """Drift tests of the current data against the reference saved when ``deployed`` was validated."""
        strategy = self.strategy()
        if not strategy.supports_drift_monitoring:
            from ai4hi_sdk.tasks.registry import known_tasks, task_strategy

            able = "/".join(t for t in known_tasks() if task_strategy(t).supports_drift_monitoring)
            raise ValueError(f"drift monitoring is {able}-only in this SDK version ({strategy.name} job)")
        sha = model_sha256(deployed)
        ref_file = reference_path(self._workspace(), sha)
        if not ref_file.exists():
            raise FileNotFoundError(f"no drift reference for model {sha[:16]} at this site: validate it here first")
        reference = DriftFeatures.load(ref_file)
        current = self.current_features(deployed)
        alarm = compare_features(reference, current, alpha=self.config.drift_alpha,
                                 n_permutations=self.config.drift_permutations, seed=self.config.seed)
        return {"drift": drift_report(alarm, reference.n, current.n)}


def _same(a: Any, b: Any) -> bool:
    """Whether two test-split references are equal (arrays, or lists of arrays such as masks)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def read_validation_file(folder: str | Path) -> ValidationSpec:
    return ValidationSpec.model_validate(json.loads((Path(folder) / VALIDATION_FILE).read_text()))


def write_validation_file(config: ValidationSpec, folder: str | Path) -> Path:
    path = Path(folder) / VALIDATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True))
    return path

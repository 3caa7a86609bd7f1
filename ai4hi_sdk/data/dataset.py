"""Torch datasets over a scanned, labelled DICOM site.

:func:`load_site_splits` turns a site folder (``labels.csv`` + ``dicom/``) into train / val /
test :class:`DicomClassificationDataset` objects: scan, join labels (or, with
``labels_from="reports"``, weak labels from the site's reports: :mod:`~ai4hi_sdk.data.weak_labels`),
drop unlabelled images, keep
the images the job declares it trains on (:class:`~ai4hi_sdk.data.selection.ImageSelection`;
the rest are counted by reason in the scan report's ``excluded``), split by study UID. Everything stays inside
the site: subgroup attributes are kept per item
for local audits only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ai4hi_sdk.data.labels import LabelJoin, join_labels, load_label_manifest
from ai4hi_sdk.data.weak_labels import LabelAgreement, WeakLabels
from ai4hi_sdk.data.scan import InstanceRecord, ScanReport, scan_directory
from ai4hi_sdk.data.selection import ImageSelection, select
from ai4hi_sdk.data.splits import DEFAULT_FRACTIONS, Split, assign_split
from ai4hi_sdk.data.transforms import augment_transforms, load_pixels, preprocess_transforms
from ai4hi_sdk.errors import UserError

LABELS_FILE = "labels.csv"
DICOM_DIR = "dicom"

_TRUE = {"1", "true", "yes", "y", "positive", "pos", "abnormal"}
_FALSE = {"0", "false", "no", "n", "negative", "neg", "normal"}


class ClassificationItem(NamedTuple):
    """One image: absolute ``path``, integer ``label``, SOP Instance UID and subgroups."""

    path: Path
    label: int
    sop_instance_uid: str
    sex: str = "unknown"
    age_band: str = "unknown"
    manufacturer: str = "unknown"


class DicomClassificationDataset(Dataset):
    """2D classification dataset over DICOM files.

    Items are sorted by SOP Instance UID so the order never depends on the file system.
    Each image is decoded once (:func:`load_pixels`) and its deterministic preprocessing
    (normalise + resize) cached in memory — sites are small; only the random augmentation
    runs per access.

    ``dataset[i]`` is ``(image, label)``: float32 tensor [1, S, S] with values about [0, 1]
    and an int64 0-dim tensor.
    """

    def __init__(
        self,
        items: Sequence[ClassificationItem],
        *,
        image_size: int = 64,
        augment: bool = False,
    ):
        self.items: list[ClassificationItem] = sorted(items, key=lambda it: it.sop_instance_uid)
        self.image_size = image_size
        self.augment = augment
        self._pre = preprocess_transforms(image_size)
        self._aug = augment_transforms(image_size) if augment else None
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._cache.get(index)
        if image is None:
            pixels = load_pixels(self.items[index].path)
            image = self._pre(pixels[np.newaxis])
            self._cache[index] = image
        if self._aug is not None:
            image = self._aug(image.clone())  # never let augmentation touch the cache
        return image, torch.tensor(self.items[index].label, dtype=torch.int64)

    @property
    def labels(self) -> list[int]:
        return [it.label for it in self.items]

    def attributes(self, index: int) -> dict[str, str]:
        """Subgroup attributes of item ``index``: sex, age_band, manufacturer (site-local)."""
        it = self.items[index]
        return {"sex": it.sex, "age_band": it.age_band, "manufacturer": it.manufacturer}

    def set_random_state(self, seed: int) -> None:
        """Reseed the augmentation so the sequence of random transforms is reproducible."""
        if self._aug is not None:
            self._aug.set_random_state(seed=seed)


@dataclass
class SiteSplits:
    """Datasets of one site. ``train`` augments (if asked); ``val`` and ``test`` never do.

    ``class_names[k]`` is the label text that maps to class ``k``. With weak labels from reports,
    ``weak_labels`` holds them (per study, site-local), ``report_coverage`` the report join's counts
    and ``label_agreement`` their agreement with the site's hand labels over the training images'
    studies (None without ``labels.csv`` or when its labels are not binary).
    """

    train: DicomClassificationDataset
    val: DicomClassificationDataset
    test: DicomClassificationDataset
    scan: ScanReport
    labels: LabelJoin
    class_names: list[str]
    weak_labels: WeakLabels | None = None
    report_coverage: dict | None = None
    label_agreement: LabelAgreement | None = None

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def label_to_int(text: str, classes: Sequence[str] | None = None) -> int:
    """Label text -> class index.

    With ``classes`` the index in that list (case-insensitive). Otherwise an integer
    ('0', '1', '2') or a yes/no word ('positive', 'true', 'normal', ...) for binary tasks.

    Raises:
        ValueError: the text is not a known class.
    """
    t = text.strip()
    if classes is not None:
        lowered = [c.lower() for c in classes]
        if t.lower() in lowered:
            return lowered.index(t.lower())
        raise ValueError(f"label {text!r} is not one of the classes {list(classes)}")
    try:
        value = int(float(t)) if float(t).is_integer() else None
    except ValueError:
        value = None
    if value is not None and value >= 0:
        return value
    if t.lower() in _TRUE:
        return 1
    if t.lower() in _FALSE:
        return 0
    raise ValueError(
        f"label {text!r} is not an integer class; give labels as 0, 1, ... or pass classes="
    )


def site_labels_path(site_dir: Path) -> Path:
    """``site_dir/labels.csv``; UserError if the site folder or its labels file is missing."""
    if not site_dir.is_dir():
        raise UserError(f"site folder not found: {site_dir}")
    labels_path = site_dir / LABELS_FILE
    if not labels_path.is_file():
        raise UserError(f"{site_dir} has no {LABELS_FILE} (expected next to the dicom/ folder)")
    return labels_path


def site_dicom_root(site_dir: Path) -> Path:
    """``site_dir/dicom`` if it exists, else ``site_dir`` itself."""
    sub = Path(site_dir) / DICOM_DIR
    return sub if sub.is_dir() else Path(site_dir)


def load_site_splits(
    site_dir: Path,
    *,
    image_size: int = 64,
    augment: bool = True,
    label_column: str = "label",
    classes: Sequence[str] | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    verify_pixels: bool = False,
    selection: ImageSelection | None = None,
    labels_from: str = "labels",
    report_finding: str | None = None,
    uncertain: str = "ignore",
    labeler_version: str | None = None,
) -> SiteSplits:
    """Scan a site, join its labels and split it by study.

    Layout: ``site_dir/labels.csv`` and DICOM files under ``site_dir/dicom/`` (or directly
    under ``site_dir`` when there is no ``dicom/`` folder).

    Args:
        image_size: side S of the square images the datasets return.
        augment: random augmentation for the training split.
        label_column: label column of ``labels.csv``.
        classes: ordered class names when labels are text; default: integer labels.
        fractions: (train, val, test) fractions for :func:`assign_split`.
        verify_pixels: decode every image during the scan (slower, catches bad pixel data).
        selection: the job's training images (default: :class:`ImageSelection`'s defaults,
            those of the job spec's ``data:`` block). Labelled images outside it are added to
            ``scan.excluded`` with a reason.
        labels_from: ``labels`` (``labels.csv``) or ``reports`` (weak labels of ``report_finding``
            from ``reports.csv`` and SR objects, labelled with rule set ``labeler_version``;
            ``uncertain`` mentions ignored, or taken as positive / negative).

    Raises:
        UserError: missing folder or labels file, bad labels, unknown rule set or finding, or no
            labelled training images.
    """
    site_dir = Path(site_dir)
    dicom_root = site_dicom_root(site_dir)
    if labels_from == "reports":
        if not site_dir.is_dir():
            raise UserError(f"site folder not found: {site_dir}")
        report = scan_directory(dicom_root, verify_pixels=verify_pixels)
        join, weak, coverage = _weak_label_join(site_dir, report, report_finding, uncertain, labeler_version)
        labels_path = site_dir / LABELS_FILE
        classes = None  # weak labels are 0 / 1
    elif labels_from == "labels":
        labels_path = site_labels_path(site_dir)
        report = scan_directory(dicom_root, verify_pixels=verify_pixels)
        manifest = load_label_manifest(labels_path, label_column=label_column)
        join, weak, coverage = join_labels(report, manifest), None, None
    else:
        raise UserError(f"labels_from must be 'labels' or 'reports', got {labels_from!r}")
    if not join.labels and weak is not None:
        raise UserError(
            f"{site_dir}: no study has a weak label for '{weak.finding}' ({report.files_read} images read, "
            f"{(coverage or {}).get('with_report', 0)} studies with a report, {len(weak.dropped_uncertain)} left out "
            f"as uncertain); check reports.csv and the SR objects (`ai4hi data scan --reports`)")
    if not join.labels:
        raise UserError(
            f"{site_dir}: no labelled images ({report.files_read} images read from "
            f"{dicom_root}, {len(manifest.labels)} labels keyed by {manifest.key_column} "
            f"in {labels_path}; {len(join.extra_keys)} label keys match no image)"
        )

    labelled = [r for r in report.instances if r.sop_instance_uid in join.labels]
    kept, excluded = select(labelled, selection or ImageSelection(), "image")
    report.excluded.extend(excluded)
    if not kept:
        raise UserError(
            f"{site_dir}: none of the {len(labelled)} labelled images is one the job trains on "
            f"(left out by reason: {report.excluded_by_reason}); check the job's data: block "
            "(modalities, sop_classes, image_types, multiframe)"
        )

    by_split: dict[Split, list[ClassificationItem]] = {"train": [], "val": [], "test": []}
    used: set[int] = set()
    for record in kept:
        text = join.labels[record.sop_instance_uid]
        try:
            label = label_to_int(text, classes)
        except ValueError as err:
            raise UserError(f"{labels_path}: {err}") from err
        used.add(label)
        split = assign_split(record.study_instance_uid, fractions=fractions)
        by_split[split].append(_item(dicom_root, record, label))
    n_classes = max(used) + 1
    class_names = list(classes) if classes is not None else [str(k) for k in range(n_classes)]
    agreement = None
    if weak is not None and labels_path.is_file():
        agreement = _agreement_with_hand_labels(report, labels_path, label_column, weak, kept)
    return SiteSplits(
        train=DicomClassificationDataset(by_split["train"], image_size=image_size, augment=augment),
        val=DicomClassificationDataset(by_split["val"], image_size=image_size),
        test=DicomClassificationDataset(by_split["test"], image_size=image_size),
        scan=report,
        labels=join,
        class_names=class_names,
        weak_labels=weak,
        report_coverage=coverage,
        label_agreement=agreement,
    )


def _weak_label_join(site_dir: Path, report: ScanReport, finding: str | None, uncertain: str,
                     version: str | None) -> tuple[LabelJoin, WeakLabels, dict]:
    """Weak labels of the site's studies, as a study-level :class:`LabelJoin` of its images."""
    from ai4hi_sdk.data.labeler import UnknownRuleSet, get_rule_set
    from ai4hi_sdk.data.reports import load_site_reports
    from ai4hi_sdk.data.weak_labels import weak_labels

    if not finding or not version:
        raise UserError("labels from reports need data.report_finding and data.labeler_version in the job")
    try:
        rules = get_rule_set(version)
    except UnknownRuleSet as err:
        raise UserError(str(err.args[0])) from None
    reports = load_site_reports(site_dir, report)
    try:
        weak = weak_labels(reports, rules, finding, uncertain)  # type: ignore[arg-type]
    except ValueError as err:
        raise UserError(str(err)) from None
    labels: dict[str, str] = {}
    missing: list[str] = []
    for record in report.instances:
        value = weak.labels.get(record.study_instance_uid)
        if value is None:
            missing.append(record.sop_instance_uid)
        else:
            labels[record.sop_instance_uid] = str(value)
    all_studies = {r.study_instance_uid for r in report.instances}
    join = LabelJoin(key_level="study", labels=labels, missing_instances=sorted(missing),
                     missing_studies=sorted(all_studies - set(weak.labels)), extra_keys=[], duplicates=[],
                     problems=[], n_instances=len(report.instances))
    return join, weak, reports.summary()


def _agreement_with_hand_labels(report: ScanReport, labels_path: Path, label_column: str, weak: WeakLabels,
                                kept: Sequence[InstanceRecord]) -> LabelAgreement | None:
    """Weak vs hand labels over the studies of the images the job trains on (None: the hand
    labels are unreadable or not binary; a study whose images carry different hand labels is left out)."""
    from ai4hi_sdk.data.weak_labels import label_agreement
    from ai4hi_sdk.errors import ConfigError

    try:
        hand_join = join_labels(report, load_label_manifest(labels_path, label_column=label_column))
    except ConfigError:
        return None
    per_study: dict[str, set[int]] = {}
    for record in kept:
        text = hand_join.labels.get(record.sop_instance_uid)
        if text is None:
            continue
        try:
            value = label_to_int(text)
        except ValueError:
            return None
        if value not in (0, 1):
            return None
        per_study.setdefault(record.study_instance_uid, set()).add(value)
    hand = {study: next(iter(values)) for study, values in per_study.items() if len(values) == 1}
    return label_agreement(weak.labels, hand)


def _item(root: Path, record: InstanceRecord, label: int) -> ClassificationItem:
    return ClassificationItem(
        path=(root / record.path).absolute(),
        label=label,
        sop_instance_uid=record.sop_instance_uid,
        sex=record.sex,
        age_band=record.age_band,
        manufacturer=record.manufacturer,
    )

"""DICOM data: scan and index folders, label manifests, splits, datasets, synthetic sites.

Modules, one job each:

* :mod:`~ai4hi_sdk.data.subgroups`  - normalise sex / age / vendor header values
* :mod:`~ai4hi_sdk.data.dicomio`    - plain / gzipped files, one-frame decoding, copy ranking
* :mod:`~ai4hi_sdk.data.scan`       - fault-tolerant folder scan -> :class:`ScanReport`
* :mod:`~ai4hi_sdk.data.selection`  - what a job trains on (modalities, SOP classes, image types)
* :mod:`~ai4hi_sdk.data.labels`     - CSV label manifests keyed by a DICOM UID, joins
* :mod:`~ai4hi_sdk.data.reports`    - radiology reports: reports.csv (RIS export), DICOM SR, coverage
* :mod:`~ai4hi_sdk.data.labeler`    - versioned NegEx-style rules: report -> per-finding assertions
* :mod:`~ai4hi_sdk.data.weak_labels` - weak labels of one finding per study, agreement with hand labels
* :mod:`~ai4hi_sdk.data.splits`     - deterministic train/val/test by study UID
* :mod:`~ai4hi_sdk.data.transforms` - pixel loading (LUTs) and MONAI pipelines
* :mod:`~ai4hi_sdk.data.dataset`    - torch datasets for a site (2D classification)
* :mod:`~ai4hi_sdk.data.geometry`   - slice order, spacing, affine of a series, or why it is no volume
* :mod:`~ai4hi_sdk.data.assembly`   - classic series and Enhanced multi-frame objects -> volumes
* :mod:`~ai4hi_sdk.data.masks`      - DICOM SEG / .npz / .npy masks placed on a volume by position
* :mod:`~ai4hi_sdk.data.volumes`    - torch datasets of volumes and masks (segmentation)
* :mod:`~ai4hi_sdk.data.synth`      - synthetic consortia written as real DICOM
* :mod:`~ai4hi_sdk.data.report_synth` - synthetic reports consistent with the images, as CSV rows or SR

The torch/MONAI-backed names (datasets, transforms) are imported lazily: importing this
package for a scan does not pay the multi-second torch + MONAI import.
"""

from __future__ import annotations

import importlib
from typing import Any

from ai4hi_sdk.data.labels import LabelJoin, LabelManifest, join_labels, load_label_manifest
from ai4hi_sdk.data.scan import (
    ExcludedInstance,
    InstanceRecord,
    ReportObjectRecord,
    ScanReport,
    SegmentationRecord,
    SeriesRefusal,
    SkippedFile,
    scan_directory,
)
from ai4hi_sdk.data.selection import ImageSelection, select
from ai4hi_sdk.data.splits import assign_split, split_counts
from ai4hi_sdk.data.subgroups import (
    age_band,
    normalise_manufacturer,
    normalise_sex,
    parse_age_years,
)

_LAZY = {
    "DicomClassificationDataset": "ai4hi_sdk.data.dataset",
    "ClassificationItem": "ai4hi_sdk.data.dataset",
    "SiteSplits": "ai4hi_sdk.data.dataset",
    "load_site_splits": "ai4hi_sdk.data.dataset",
    "classification_transforms": "ai4hi_sdk.data.transforms",
    "load_pixels": "ai4hi_sdk.data.transforms",
    "synth_site": "ai4hi_sdk.data.synth",
    "synth_consortium": "ai4hi_sdk.data.synth",
}

__all__ = [
    "ExcludedInstance",
    "ImageSelection",
    "InstanceRecord",
    "ReportObjectRecord",
    "SegmentationRecord",
    "SeriesRefusal",
    "select",
    "LabelJoin",
    "LabelManifest",
    "ScanReport",
    "SkippedFile",
    "age_band",
    "assign_split",
    "join_labels",
    "load_label_manifest",
    "normalise_manufacturer",
    "normalise_sex",
    "parse_age_years",
    "scan_directory",
    "split_counts",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

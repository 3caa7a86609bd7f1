"""3D volumes + segmentation masks over a scanned DICOM site (one item per series).

:func:`load_site_volume_splits` turns a segmentation site folder into train / val / test
:class:`DicomVolumeDataset` objects:

* ``dicom/**.dcm``: one file per slice; slices are grouped by SeriesInstanceUID (from the SDK's
  scan, :func:`~ai4hi_sdk.data.scan.scan_directory`) and ordered by ImagePositionPatient along
  the slice normal (z), then InstanceNumber;
* ``labels.csv``: ``SeriesInstanceUID,mask`` where ``mask`` is a path, relative to the site
  folder, of a ``.npy`` uint8 array ``[slices, rows, cols]`` in the same slice order
  (what ``ai4hi data synth --task segmentation`` writes).

Pixels are decoded with pydicom in modality units (Hounsfield units for CT: RescaleSlope /
Intercept applied, no window), clipped to a fixed HU window and scaled to [0, 1]. Volumes are
zero-padded to a multiple of ``divisor`` in every dimension (a UNet with strides (2, 2) needs
4); masks are padded the same way and predictions are cropped back before any metric.

Splits are by study (:func:`~ai4hi_sdk.data.splits.assign_split`), like classification. Subgroup
attributes (sex, age band, manufacturer) are kept per series for local audits only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ai4hi_sdk.data.dataset import site_dicom_root, site_labels_path
from ai4hi_sdk.data.labels import LabelJoin, join_labels, load_label_manifest
from ai4hi_sdk.data.scan import InstanceRecord, ScanReport, scan_directory
from ai4hi_sdk.data.splits import DEFAULT_FRACTIONS, Split, assign_split
from ai4hi_sdk.data.transforms import load_pixels
from ai4hi_sdk.errors import UserError

#: HU window mapped to [0, 1] (soft tissue and lesions; air and bone saturate)
DEFAULT_HU_WINDOW = (-200.0, 300.0)
MASK_COLUMN = "mask"


class VolumeItem(NamedTuple):
    """One series: its slice files (in order), its mask file, voxel spacing and subgroups."""

    series_instance_uid: str
    study_instance_uid: str
    slice_paths: tuple[Path, ...]
    mask_path: Path
    spacing: tuple[float, float, float]  # (slice, row, column) in mm
    sex: str = "unknown"
    age_band: str = "unknown"
    manufacturer: str = "unknown"


class DicomVolumeDataset(Dataset):
    """3D segmentation dataset: ``dataset[i]`` is ``(volume [1, D, H, W] float32 in [0, 1],
    mask [1, D, H, W] float32 in {0, 1})``, both padded to multiples of ``divisor``.

    Items are sorted by Series Instance UID; each volume is decoded once and cached (sites and
    volumes are small). ``true_mask(i)`` and ``shape(i)`` give the unpadded ground truth and
    shape; ``crop(i, pred)`` undoes the padding of a prediction.
    """

    def __init__(self, items: Sequence[VolumeItem], *, hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
                 divisor: int = 4):
        self.items: list[VolumeItem] = sorted(items, key=lambda it: it.series_instance_uid)
        self.hu_window = hu_window
        self.divisor = divisor
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        item = self.items[index]
        hu = np.stack([load_pixels(p, apply_voi=False) for p in item.slice_paths]).astype(np.float32)
        mask = np.load(item.mask_path)
        if mask.shape != hu.shape:
            raise UserError(f"mask {item.mask_path} has shape {mask.shape}, the series has {hu.shape} "
                            "(slices, rows, columns)")
        lo, hi = self.hu_window
        volume = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)
        shape = tuple(int(s) for s in hu.shape)
        pad = [(0, (-s) % self.divisor) for s in shape]
        volume_t = torch.from_numpy(np.pad(volume, pad)[None].astype(np.float32))
        mask_t = torch.from_numpy((np.pad(mask, pad) != 0)[None].astype(np.float32))
        self._cache[index] = (volume_t, mask_t, shape)  # type: ignore[assignment]
        return self._cache[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        volume, mask, _ = self._load(index)
        return volume, mask

    def shape(self, index: int) -> tuple[int, int, int]:
        return self._load(index)[2]

    def crop(self, index: int, array: np.ndarray) -> np.ndarray:
        """``array [..., D', H', W']`` (padded) -> ``[..., D, H, W]`` of item ``index``."""
        d, h, w = self.shape(index)
        return array[..., :d, :h, :w]

    def true_mask(self, index: int) -> np.ndarray:
        """Unpadded ground-truth mask of item ``index``, uint8 ``[D, H, W]``."""
        return self.crop(index, self._load(index)[1][0].numpy()).astype(np.uint8)

    def attributes(self, index: int) -> dict[str, str]:
        """Subgroup attributes of item ``index``: sex, age_band, manufacturer (site-local)."""
        it = self.items[index]
        return {"sex": it.sex, "age_band": it.age_band, "manufacturer": it.manufacturer}

    def spacing(self) -> tuple[float, float, float] | None:
        """The voxel spacing (mm) shared by every item, None if they differ or there are none."""
        spacings = {it.spacing for it in self.items}
        return next(iter(spacings)) if len(spacings) == 1 else None


@dataclass
class VolumeSplits:
    """Datasets of one segmentation site (no augmentation)."""

    train: DicomVolumeDataset
    val: DicomVolumeDataset
    test: DicomVolumeDataset
    scan: ScanReport
    labels: LabelJoin

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _slice_key(record: InstanceRecord) -> tuple[float, int, str]:
    z = record.image_position[2] if record.image_position is not None else 0.0
    return (record.instance_number or 0, z, record.sop_instance_uid)


def _series_spacing(records: list[InstanceRecord]) -> tuple[float, float, float]:
    row, col = records[0].pixel_spacing or (1.0, 1.0)
    zs = [r.image_position[2] for r in records if r.image_position is not None]
    if len(zs) == len(records) and len(zs) > 1:
        dz = float(np.median(np.diff(zs)))
    else:
        dz = 1.0
    return (round(abs(dz), 6) or 1.0, float(row), float(col))


def load_site_volume_splits(site_dir: Path, *, mask_column: str = MASK_COLUMN,
                            fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                            hu_window: tuple[float, float] = DEFAULT_HU_WINDOW, divisor: int = 4) -> VolumeSplits:
    """Scan a segmentation site, join masks by series and split by study (see module doc).

    Raises:
        UserError: missing folder, labels file or mask file, or no series with a mask.
    """
    site_dir = Path(site_dir)
    labels_path = site_labels_path(site_dir)
    dicom_root = site_dicom_root(site_dir)
    report = scan_directory(dicom_root)
    manifest = load_label_manifest(labels_path, label_column=mask_column)
    join = join_labels(report, manifest)
    series: dict[str, list[InstanceRecord]] = {}
    for record in report.instances:
        if record.sop_instance_uid in join.labels:
            series.setdefault(record.series_instance_uid, []).append(record)
    if not series:
        raise UserError(f"{site_dir}: no series with a mask ({report.files_read} images read from {dicom_root}, "
                        f"{len(manifest.labels)} rows keyed by {manifest.key_column} in {labels_path})")
    by_split: dict[Split, list[VolumeItem]] = {"train": [], "val": [], "test": []}
    for uid, records in series.items():
        records.sort(key=_slice_key)
        mask_path = (site_dir / join.labels[records[0].sop_instance_uid]).resolve()
        if not mask_path.is_file():
            raise UserError(f"{labels_path}: mask file of series {uid} not found: {mask_path}")
        first = records[0]
        item = VolumeItem(series_instance_uid=uid, study_instance_uid=first.study_instance_uid,
                          slice_paths=tuple((dicom_root / r.path).absolute() for r in records),
                          mask_path=mask_path, spacing=_series_spacing(records), sex=first.sex,
                          age_band=first.age_band, manufacturer=first.manufacturer)
        by_split[assign_split(first.study_instance_uid, fractions=fractions)].append(item)
    make = lambda items: DicomVolumeDataset(items, hu_window=hu_window, divisor=divisor)  # noqa: E731
    return VolumeSplits(train=make(by_split["train"]), val=make(by_split["val"]), test=make(by_split["test"]),
                        scan=report, labels=join)

"""3D volumes + segmentation masks over a scanned DICOM site (one item per series).

:func:`load_site_volume_splits` turns a segmentation site folder into train / val /test
:class:`DicomVolumeDataset` objects:

* ``dicom/**``: classic series (one file per slice, grouped by SeriesInstanceUID) or Enhanced
  multi-frame CT / MR objects, kept when the job trains on them
  (:class:`~ai4hi_sdk.data.selection.ImageSelection`) and assembled by geometry
  (:mod:`~ai4hi_sdk.data.assembly`, :mod:`~ai4hi_sdk.data.geometry`): slices ordered along the
  slice normal, spacing measured from the positions, an affine per volume. A series that is no
  regular volume (gap, tilt, several orientations, localizers, mixed sizes, ...) is refused and
  listed in the scan report's ``refused_series`` with its reason;
* ``labels.csv``: ``SeriesInstanceUID,mask`` where ``mask`` is a path, relative to the site
  folder, of a DICOM SEG, an ``.npz`` (mask + affine) or a ``.npy`` in the volume convention
  (:mod:`~ai4hi_sdk.data.masks`); a SEG object in ``dicom/`` referencing a series without a row
  serves as its mask too. Masks are matched to the volume by frame of reference and position.

Pixels are decoded in modality units (Hounsfield units for CT: RescaleSlope / Intercept applied,
from the functional groups for Enhanced objects, no window), clipped to a fixed HU window and
scaled to [0, 1]. Volumes are zero-padded to a multiple of ``divisor`` in every dimension (a UNet
with strides (2, 2) needs 4); masks are padded the same way and predictions are cropped back before
any metric. Every item keeps its own spacing (mm) and affine, so HD95 is measured per case.

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

from ai4hi_sdk.data.assembly import AssembledVolume, assemble_volumes, decode_volume, group_by_series
from ai4hi_sdk.data.dataset import site_dicom_root, site_labels_path
from ai4hi_sdk.data.geometry import VolumeGeometry
from ai4hi_sdk.data.labels import LabelJoin, join_labels, load_label_manifest
from ai4hi_sdk.data.masks import load_mask
from ai4hi_sdk.data.scan import ScanReport, scan_directory
from ai4hi_sdk.data.selection import ImageSelection, select
from ai4hi_sdk.data.splits import DEFAULT_FRACTIONS, Split, assign_split
from ai4hi_sdk.errors import UserError

#: HU window mapped to [0, 1] (soft tissue and lesions; air and bone saturate)
DEFAULT_HU_WINDOW = (-200.0, 300.0)
MASK_COLUMN = "mask"
#: a volume job's default selection: single-frame slices and Enhanced objects stacked by geometry
VOLUME_SELECTION = ImageSelection(multiframe="volume")


class VolumeItem(NamedTuple):
    """One series: its volume (geometry and sources), its mask file and subgroups.

    ``spacing`` is (slice, row, column) in mm and ``affine`` maps (slice, row, column) indices to
    patient LPS mm (:mod:`~ai4hi_sdk.data.geometry`); both hold for the volume and its mask.
    """

    series_instance_uid: str
    study_instance_uid: str
    slice_paths: tuple[Path, ...]
    mask_path: Path
    spacing: tuple[float, float, float]
    sex: str = "unknown"
    age_band: str = "unknown"
    manufacturer: str = "unknown"
    volume: AssembledVolume | None = None

    @property
    def affine(self) -> np.ndarray:
        return self.volume.geometry.affine if self.volume is not None else np.diag([*self.spacing, 1.0])


class DicomVolumeDataset(Dataset):
    """3D segmentation dataset: ``dataset[i]`` is ``(volume [1, D, H, W] float32 in [0, 1],
    mask [1, D, H, W] float32 in {0, 1})``, both padded to multiples of ``divisor``.

    Items are sorted by Series Instance UID; each volume is decoded once and cached (sites and
    volumes are small). ``true_mask(i)`` and ``shape(i)`` give the unpadded ground truth and
    shape; ``crop(i, pred)`` undoes the padding of a prediction; ``spacings()`` gives each item's
    voxel spacing.
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
        if item.volume is None:
            raise UserError(f"series {item.series_instance_uid}: no assembled volume")
        hu = decode_volume(item.volume)
        mask = load_mask(item.mask_path, item.volume.geometry, series=item.series_instance_uid)
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

    def spacings(self) -> list[tuple[float, float, float]]:
        """Voxel spacing (mm: slice, row, column) of every item, in item order."""
        return [it.spacing for it in self.items]

    def spacing(self) -> tuple[float, float, float] | None:
        """The voxel spacing (mm) shared by every item, None if they differ or there are none."""
        spacings = set(self.spacings())
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


def load_site_volume_splits(site_dir: Path, *, mask_column: str = MASK_COLUMN,
                            fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                            hu_window: tuple[float, float] = DEFAULT_HU_WINDOW, divisor: int = 4,
                            selection: ImageSelection | None = None) -> VolumeSplits:
    """Scan a segmentation site, assemble its labelled series by geometry, join masks, split by study.

    Args:
        selection: the job's training images (default :data:`VOLUME_SELECTION`: any modality and SOP
            class, ORIGINAL images, Enhanced objects stacked). Labelled images outside it go to
            ``scan.excluded``; series that are no volume to ``scan.refused_series``.

    Raises:
        UserError: missing folder, labels file or mask file, a mask that does not lie on its
            series' grid, or no series left to train on.
    """
    site_dir = Path(site_dir)
    selection = selection or VOLUME_SELECTION
    labels_path = site_labels_path(site_dir)
    dicom_root = site_dicom_root(site_dir)
    report = scan_directory(dicom_root)
    manifest = load_label_manifest(labels_path, label_column=mask_column)
    join = join_labels(report, manifest)
    masks = _seg_masks(report, dicom_root)
    masks.update({r.series_instance_uid: (site_dir / join.labels[r.sop_instance_uid]).resolve()
                  for r in report.instances if r.sop_instance_uid in join.labels})
    labelled = [r for r in report.instances if r.series_instance_uid in masks]
    kept, excluded = select(labelled, selection, "volume")
    report.excluded.extend(excluded)
    volumes, refusals = assemble_volumes(group_by_series(kept), dicom_root, image_types=selection.image_types)
    report.refused_series.extend(refusals)
    report.excluded.extend(e for volume in volumes for e in volume.dropped)
    if not volumes:
        raise UserError(f"{site_dir}: no series with a mask to train on ({report.files_read} images read from "
                        f"{dicom_root}, {len(manifest.labels)} rows keyed by {manifest.key_column} in {labels_path}; "
                        f"images left out {report.excluded_by_reason or 'none'}, series refused "
                        f"{report.series_refused_by_reason or 'none'}"
                        + (f", e.g. {refusals[0].detail}" if refusals else "") + ")")
    by_split: dict[Split, list[VolumeItem]] = {"train": [], "val": [], "test": []}
    for volume in volumes:
        uid, first = volume.series_instance_uid, volume.record
        mask_path = masks[uid]
        if not mask_path.is_file():
            raise UserError(f"{labels_path}: mask file of series {uid} not found: {mask_path}")
        load_mask(mask_path, volume.geometry, series=uid)  # a mask off its series' grid fails here, not mid-round
        item = VolumeItem(series_instance_uid=uid, study_instance_uid=first.study_instance_uid,
                          slice_paths=volume.slice_paths, mask_path=mask_path, spacing=_rounded(volume.geometry),
                          sex=first.sex, age_band=first.age_band, manufacturer=first.manufacturer, volume=volume)
        by_split[assign_split(first.study_instance_uid, fractions=fractions)].append(item)
    make = lambda items: DicomVolumeDataset(items, hu_window=hu_window, divisor=divisor)  # noqa: E731
    return VolumeSplits(train=make(by_split["train"]), val=make(by_split["val"]), test=make(by_split["test"]),
                        scan=report, labels=join)


def _seg_masks(report: ScanReport, dicom_root: Path) -> dict[str, Path]:
    """Series UID -> the SEG object (found by the scan) that is its only mask."""
    by_series: dict[str, list[Path]] = {}
    for seg in report.segmentations:
        for uid in seg.referenced_series_uids:
            by_series.setdefault(uid, []).append((dicom_root / seg.path).resolve())
    return {uid: paths[0] for uid, paths in by_series.items() if len(paths) == 1}


def _rounded(geometry: VolumeGeometry) -> tuple[float, float, float]:
    # measured step: round off float noise of the DS strings (1e-6 mm), keep the value
    return tuple(round(float(s), 6) for s in geometry.spacing)  # type: ignore[return-value]

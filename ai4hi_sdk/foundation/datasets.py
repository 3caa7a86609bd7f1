"""Every image of a modality at a site, labelled or not: the data of self-supervised pretraining.

:func:`load_pretrain_images` scans a site folder, keeps the single-frame greyscale images of the
declared modalities and splits them by study with the same rule as the labelled datasets
(:func:`~ai4hi_sdk.data.splits.assign_split`): pretraining uses the train split only (labelled
or not), the validation split only to report the reconstruction loss, and never the test split, so
studies held out for testing stay unseen by the backbone as well.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ai4hi_sdk.data.dataset import LABELS_FILE, ClassificationItem, DicomClassificationDataset, site_dicom_root
from ai4hi_sdk.data.scan import ScanReport, scan_directory
from ai4hi_sdk.data.splits import assign_split
from ai4hi_sdk.errors import UserError


class UnlabelledImageDataset(Dataset):
    """2D images without labels: ``dataset[i]`` is ``(image,)``, a float32 tensor ``[1, S, S]`` in
    about [0, 1] (a one-tuple, so opacus's Poisson loader can build empty batches).

    Decoding, normalisation, resizing, caching and augmentation are those of
    :class:`~ai4hi_sdk.data.dataset.DicomClassificationDataset`.
    """

    def __init__(self, items: Sequence[ClassificationItem], *, image_size: int, augment: bool = False):
        self._inner = DicomClassificationDataset(items, image_size=image_size, augment=augment)

    def __len__(self) -> int:
        return len(self._inner)

    def __getitem__(self, index: int) -> tuple[torch.Tensor]:
        return (self._inner[index][0],)

    def set_random_state(self, seed: int) -> None:
        self._inner.set_random_state(seed)


@dataclass
class PretrainSplits:
    """A site's pretraining images. ``labelled_train`` counts train images that also have a label
    row (for the card: how much unlabelled data pretraining added); ``modalities`` counts the
    kept images per modality."""

    train: UnlabelledImageDataset
    val: UnlabelledImageDataset
    test_excluded: int
    labelled_train: int
    modalities: dict[str, int]

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test_excluded": self.test_excluded,
                "labelled_train": self.labelled_train, "unlabelled_train": len(self.train) - self.labelled_train}


def load_pretrain_images(site_dir: str | Path, *, modalities: Sequence[str], image_size: int,
                         augment: bool = False) -> PretrainSplits:
    """Every single-frame greyscale image of ``modalities`` under ``site_dir`` (``dicom/`` if present).

    Raises:
        UserError: missing folder, or no image of the declared modalities (the message lists the
            modalities found).
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise UserError(f"site folder not found: {site_dir}")
    wanted = {m.strip().upper() for m in modalities}
    if not wanted:
        raise UserError("pretraining needs at least one modality (e.g. CR, DX)")
    root = site_dicom_root(site_dir)
    report = scan_directory(root)
    found = Counter(r.modality for r in report.instances)
    keep = [r for r in report.instances
            if r.modality.upper() in wanted and r.number_of_frames == 1 and r.samples_per_pixel == 1]
    if not keep:
        seen = ", ".join(f"{m or '?'} {n}" for m, n in sorted(found.items())) or "none"
        raise UserError(f"{site_dir}: no single-frame {'/'.join(sorted(wanted))} images to pretrain on "
                        f"(modalities found: {seen})")
    labelled_uids = _labelled_instances(site_dir, report)
    by_split: dict[str, list[ClassificationItem]] = {"train": [], "val": [], "test": []}
    for record in keep:
        item = ClassificationItem(path=(root / record.path).absolute(), label=0,
                                  sop_instance_uid=record.sop_instance_uid,
                                  sex=record.sex, age_band=record.age_band, manufacturer=record.manufacturer)
        by_split[assign_split(record.study_instance_uid)].append(item)
    return PretrainSplits(
        train=UnlabelledImageDataset(by_split["train"], image_size=image_size, augment=augment),
        val=UnlabelledImageDataset(by_split["val"], image_size=image_size),
        test_excluded=len(by_split["test"]),
        labelled_train=sum(1 for it in by_split["train"] if it.sop_instance_uid in labelled_uids),
        modalities=dict(Counter(r.modality for r in keep)),
    )


def _labelled_instances(site_dir: Path, report: ScanReport) -> set[str]:
    """SOP Instance UIDs with a label row (empty when the site has no labels.csv)."""
    from ai4hi_sdk.data.labels import join_labels, load_label_manifest

    labels_path = site_dir / LABELS_FILE
    if not labels_path.is_file():
        return set()
    try:
        return set(join_labels(report, load_label_manifest(labels_path)).labels)
    except UserError:
        return set()  # a broken manifest does not stop pretraining, which needs no labels

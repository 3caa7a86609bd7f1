"""Image-report pairs at a site: each image of the job's training split with its study's report.

:func:`load_image_report_pairs` scans a site folder, joins its reports (``reports.csv`` rows and DICOM
SR objects, :func:`~ai4hi_sdk.data.reports.load_site_reports`), keeps the single-frame greyscale
images the job declares (:class:`~ai4hi_sdk.data.selection.ImageSelection`) and splits them by study
with the rule of every other dataset (:func:`~ai4hi_sdk.data.splits.assign_split`): pretraining
pairs come from the train split, the validation split gives the aggregate validation metrics,
and test-split studies are left out entirely (neither their images nor their reports are read
into the datasets), so a later test of a downstream model stays unseen. An image whose study has
no report (or an empty one) is left out and counted.

Privacy: the report texts stay in this process, at the site; :meth:`ImageReportSplits.counts` holds
counts only. Augmentation never flips left and right: the report says which lung.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ai4hi_sdk.data.dataset import ClassificationItem, DicomClassificationDataset, site_dicom_root
from ai4hi_sdk.data.selection import ImageSelection, select
from ai4hi_sdk.data.splits import DEFAULT_FRACTIONS, assign_split
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.text import ByteTokenizer, normalize_report_text, split_sentences


class ImageReportDataset(Dataset):
    """``dataset[i]`` is ``(image, ids)``: float32 ``[1, S, S]`` in about [0, 1] (decoding,
    normalisation, resizing and caching of
    :class:`~ai4hi_sdk.data.dataset.DicomClassificationDataset`) and int64 ``[max_len]`` byte ids
    of the study's report (lower-cased, :func:`~ai4hi_sdk.foundation.text.normalize_report_text`).

    Args:
        items: the images (``label`` unused).
        reports: SOP Instance UID -> the report text of that image's study.
        sentence_prob: chance that an access returns one random sentence of the report instead of
            all of it (ConVIRT's text view: prompts are short, reports long); 0 for validation.
        augment: small rotation / shift / zoom / noise, never a left-right flip.
    """

    def __init__(self, items: Sequence[ClassificationItem], reports: Mapping[str, str], *, image_size: int,
                 tokenizer: ByteTokenizer, augment: bool = False, sentence_prob: float = 0.0):
        from ai4hi_sdk.data.transforms import augment_transforms

        missing = [it.sop_instance_uid for it in items if it.sop_instance_uid not in reports]
        if missing:
            raise ValueError(f"{len(missing)} images have no report")
        if not 0.0 <= sentence_prob <= 1.0:
            raise UserError(f"sentence_prob must be in [0, 1], got {sentence_prob}")
        self._images = DicomClassificationDataset(items, image_size=image_size, augment=False)
        self._aug = augment_transforms(image_size, flip=False) if augment else None
        self.sentence_prob = float(sentence_prob)
        self._full: list[torch.Tensor] = []
        self._sentences: list[list[torch.Tensor]] = []
        for item in self._images.items:  # the inner dataset's (sorted) order
            text = reports[item.sop_instance_uid]
            self._full.append(tokenizer.encode(normalize_report_text(text)))
            self._sentences.append([tokenizer.encode(normalize_report_text(s)) for s in split_sentences(text)]
                                   if sentence_prob > 0 else [])
        self._rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self._images)

    @property
    def sop_instance_uids(self) -> list[str]:
        """The images' SOP Instance UIDs, in dataset order (site-local)."""
        return [it.sop_instance_uid for it in self._images.items]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self._images[index]
        if self._aug is not None:
            image = self._aug(image.clone())
        ids = self._full[index]
        sentences = self._sentences[index]
        if sentences and self._rng.random() < self.sentence_prob:
            ids = sentences[int(self._rng.integers(len(sentences)))]
        return image, ids

    def set_random_state(self, seed: int) -> None:
        """Reseed augmentation and sentence sampling (the training loop does, every round)."""
        self._rng = np.random.default_rng(seed)
        if self._aug is not None:
            self._aug.set_random_state(seed=seed)


@dataclass
class ImageReportSplits:
    """A site's image-report pairs (train and validation) and counts of what was left out."""

    train: ImageReportDataset
    val: ImageReportDataset
    test_excluded: int
    without_report: int
    report_coverage: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Counts only (never text)."""
        return {"train": len(self.train), "val": len(self.val), "test_excluded": self.test_excluded,
                "without_report": self.without_report}


def load_image_report_pairs(site_dir: str | Path, *, image_size: int, tokenizer: ByteTokenizer,
                            selection: ImageSelection | None = None, augment: bool = False,
                            sentence_prob: float = 0.0,
                            fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> ImageReportSplits:
    """Pairs of a site folder (``dicom/`` + ``reports.csv`` and/or SR objects).

    Raises:
        UserError: missing folder, or no training-split image with a report (the message gives
            the counts: images kept, studies with a report).
    """
    from ai4hi_sdk.data.reports import load_site_reports
    from ai4hi_sdk.data.scan import scan_directory

    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise UserError(f"site folder not found: {site_dir}")
    root = site_dicom_root(site_dir)
    scan = scan_directory(root)
    join = load_site_reports(site_dir, scan)
    images = [r for r in scan.instances if r.number_of_frames == 1 and r.samples_per_pixel == 1]
    kept, excluded = select(images, selection or ImageSelection(), "image")
    scan.excluded.extend(excluded)
    by_split: dict[str, list[ClassificationItem]] = {"train": [], "val": []}
    texts: dict[str, str] = {}
    test_excluded = without_report = 0
    for record in kept:
        split = assign_split(record.study_instance_uid, fractions=fractions)
        if split == "test":
            test_excluded += 1  # never read: a downstream test on these studies stays unseen
            continue
        text = join.text(record.study_instance_uid)
        if not text or not text.strip():
            without_report += 1
            continue
        texts[record.sop_instance_uid] = text
        by_split[split].append(ClassificationItem(path=(root / record.path).absolute(), label=0,
                                                  sop_instance_uid=record.sop_instance_uid))
    if not by_split["train"]:
        raise UserError(f"{site_dir}: no training-split image has a report ({len(kept)} images the job trains on, "
                        f"{len(join.reports)} of {join.n_studies} studies with a report, {test_excluded} images in "
                        "the test split); check reports.csv and the SR objects (`ai4hi data scan --reports`)")
    return ImageReportSplits(
        train=ImageReportDataset(by_split["train"], texts, image_size=image_size, tokenizer=tokenizer,
                                 augment=augment, sentence_prob=sentence_prob),
        val=ImageReportDataset(by_split["val"], texts, image_size=image_size, tokenizer=tokenizer),
        test_excluded=test_excluded, without_report=without_report, report_coverage=join.summary())

"""What a job trains on: the images of a labelled study that match the job's declaration.

A chest radiograph study exported from a PACS holds the radiograph and often a dose sheet, a
secondary capture, a presentation state, sometimes a CT. A study-level label applies to all of
them, so without a filter every one would be trained on under the radiograph's label.
:class:`ImageSelection` is the job's declaration (the job spec's ``data:`` block:
modalities, SOP classes, image types, what to do with multi-frame objects); :func:`select` splits
scanned records into those kept and :class:`~ai4hi_sdk.data.scan.ExcludedInstance` entries, each
with a reason code of :data:`EXCLUSION_REASONS`, which the loaders add to the scan report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ai4hi_sdk.data.scan import ExcludedInstance, InstanceRecord

Multiframe = Literal["exclude", "first_frame", "volume"]
Purpose = Literal["image", "volume"]

EXCLUSION_REASONS: dict[str, str] = {
    "modality": "Modality is not one the job trains on",
    "sop_class": "SOP class is not one the job trains on",
    "image_type": "ImageType is not one the job trains on (e.g. DERIVED when the job takes ORIGINAL)",
    "multi_frame": "multi-frame object the job did not choose to use (data.multiframe)",
    "constant_image": "every pixel holds the same value",
}


@dataclass(frozen=True)
class ImageSelection:
    """A job's declaration of its training images (defaults equal the job spec's ``data:`` defaults).

    ``modalities`` / ``sop_classes`` / ``image_types``: accepted Modality values, SOP Class UIDs and
    first ImageType values (ORIGINAL / DERIVED); ``None`` accepts any. ``multiframe``: ``exclude``
    multi-frame objects, use their ``first_frame`` as a 2D image, or stack them as a ``volume``.
    """

    modalities: tuple[str, ...] | None = None
    sop_classes: tuple[str, ...] | None = None
    image_types: tuple[str, ...] | None = ("ORIGINAL",)
    multiframe: Multiframe = "exclude"

    @classmethod
    def from_spec(cls, data: Any) -> "ImageSelection":
        """From a job spec's ``data`` block (:class:`~ai4hi_sdk.config.job_spec.DataSpec`)."""
        as_tuple = lambda v: None if v is None else tuple(v)  # noqa: E731
        return cls(modalities=as_tuple(data.modalities), sop_classes=as_tuple(data.sop_classes),
                   image_types=as_tuple(data.image_types), multiframe=data.multiframe)

    def exclusion(self, record: InstanceRecord, purpose: Purpose = "image") -> tuple[str, str] | None:
        """``(reason_code, detail)`` if ``record`` is not a training image of this job, else None.

        For ``purpose="volume"`` image types are judged per series (a refusal that names the
        series, :mod:`~ai4hi_sdk.data.geometry`) and constant slices are normal (air).
        """
        if self.modalities is not None and record.modality not in self.modalities:
            return "modality", f"Modality {record.modality}; the job trains on {', '.join(self.modalities)}"
        if self.sop_classes is not None and record.sop_class_uid not in self.sop_classes:
            return "sop_class", f"SOP class {_sop_name(record.sop_class_uid)}; the job trains on " + ", ".join(
                _sop_name(u) for u in self.sop_classes)
        if purpose == "image" and not self.image_type_ok(record.image_type):
            return "image_type", (f"ImageType {image_type_text(record.image_type)}; the job trains on "
                                  f"{' or '.join(self.image_types or ())}")
        if record.number_of_frames > 1:
            wanted = "first_frame" if purpose == "image" else "volume"
            if self.multiframe != wanted:
                return "multi_frame", (f"{record.number_of_frames} frames; data.multiframe is "
                                       f"{self.multiframe!r} ({wanted!r} would use it)")
        elif record.enhanced and purpose == "volume" and self.multiframe != "volume":
            return "multi_frame", f"Enhanced (functional-group) object; data.multiframe is {self.multiframe!r}"
        if purpose == "image" and record.constant:
            return "constant_image", "every pixel of the (first) frame holds the same value"
        return None

    def image_type_ok(self, image_type: tuple[str, ...]) -> bool:
        """Whether ImageType's first value (ORIGINAL / DERIVED) is accepted."""
        if self.image_types is None:
            return True
        return bool(image_type) and image_type[0] in self.image_types


def select(records: Iterable[InstanceRecord], selection: ImageSelection,
           purpose: Purpose = "image") -> tuple[list[InstanceRecord], list[ExcludedInstance]]:
    """Split ``records`` into the job's training images and the excluded ones (with reasons)."""
    kept: list[InstanceRecord] = []
    excluded: list[ExcludedInstance] = []
    for record in records:
        why = selection.exclusion(record, purpose)
        if why is None:
            kept.append(record)
        else:
            excluded.append(ExcludedInstance(record.path, record.sop_instance_uid, *why))
    return kept, excluded


def image_type_text(image_type: tuple[str, ...]) -> str:
    """ImageType as DICOM writes it (values joined by backslashes), '(none)' if absent."""
    return "\\".join(image_type) or "(none)"


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid

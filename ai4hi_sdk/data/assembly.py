"""Scanned records -> volumes a job can train on, or refusals that name the series and the reason.

Two kinds of source, one geometry (:mod:`~ai4hi_sdk.data.geometry`'s convention):

* classic series: one file per slice, grouped by SeriesInstanceUID; each slice's
  ImagePositionPatient / ImageOrientationPatient / PixelSpacing come from the scan's records;
* Enhanced multi-frame CT / MR objects: one file, a frame per slice; position, orientation and
  pixel measures per frame from the per-frame and shared functional groups. Only objects with a
  single stack and a plane position per frame are supported; others are refused with
  ``unsupported_multiframe``. Pixels are decoded by highdicom (rescale from the functional groups).

:func:`assemble_volumes` returns the :class:`AssembledVolume` s and the
:class:`~ai4hi_sdk.data.scan.SeriesRefusal` s; :func:`decode_volume` gives a volume's voxels in
modality units (Hounsfield units for CT), ``[slices, rows, columns]`` float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ai4hi_sdk.data import dicomio
from ai4hi_sdk.data.dicom_values import float_pair, float_triple, float_tuple
from ai4hi_sdk.data.geometry import GeometryRefusal, SliceGeometry, VolumeGeometry, assess_slices
from ai4hi_sdk.data.scan import ExcludedInstance, InstanceRecord, SeriesRefusal
from ai4hi_sdk.errors import UserError


@dataclass(frozen=True)
class AssembledVolume:
    """One volume: its geometry and where its voxels come from.

    ``slice_paths`` are the slice files in volume order (classic), or the one Enhanced file whose
    frames ``frames`` (0-based, in volume order) make the volume. ``record`` is the first
    record of the series (subgroup attributes, study UID).
    """

    series_instance_uid: str
    record: InstanceRecord
    geometry: VolumeGeometry
    slice_paths: tuple[Path, ...]
    frames: tuple[int, ...] = ()
    #: images of the series left out of the stack (localizers, other image types), with reasons
    dropped: tuple[ExcludedInstance, ...] = ()

    @property
    def enhanced(self) -> bool:
        return bool(self.frames)


def slice_geometry(record: InstanceRecord) -> SliceGeometry:
    """The patient-space header of a classic single-frame slice, from its scan record."""
    return SliceGeometry(
        key=record.path, rows=record.rows, columns=record.columns, position=record.image_position,
        orientation=record.image_orientation, pixel_spacing=record.pixel_spacing,
        frame_of_reference_uid=record.frame_of_reference_uid, instance_number=record.instance_number,
        image_type=record.image_type, slice_thickness=record.slice_thickness,
        spacing_between_slices=record.spacing_between_slices)


def frame_geometries(path: Path, *, key: str) -> list[SliceGeometry] | GeometryRefusal:
    """Per-frame patient-space headers of an Enhanced multi-frame object (functional groups)."""
    ds = dicomio.dcmread(path, stop_before_pixels=True)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not per_frame or len(per_frame) != frames:
        return GeometryRefusal("unsupported_multiframe", f"{key}: {frames} frames but "
                               f"{len(per_frame or [])} per-frame functional group items "
                               f"({ds.SOPClassUID.name} without the Enhanced geometry)")
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    stacks = {str(_item(f, None, "FrameContentSequence", "StackID")) for f in per_frame} - {"None"}
    if len(stacks) > 1:
        return GeometryRefusal("unsupported_multiframe", f"{key}: {len(stacks)} stacks in one object "
                                                         "(multi-stack objects are not supported)")
    out = []
    for k, fg in enumerate(per_frame):
        frame_type = _item(fg, shared, *_FRAME_TYPE)
        out.append(SliceGeometry(
            key=f"{key} frame {k + 1}", rows=int(ds.Rows), columns=int(ds.Columns),
            position=float_triple(_item(fg, shared, "PlanePositionSequence", "ImagePositionPatient")),
            orientation=float_tuple(_item(fg, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            pixel_spacing=float_pair(_item(fg, shared, "PixelMeasuresSequence", "PixelSpacing")),
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
            instance_number=_int(_item(fg, shared, "FrameContentSequence", "InStackPositionNumber")),
            image_type=tuple(str(v).upper() for v in (frame_type or ds.get("ImageType") or [])),
            slice_thickness=_float(_item(fg, shared, "PixelMeasuresSequence", "SliceThickness")),
            spacing_between_slices=_float(_item(fg, shared, "PixelMeasuresSequence", "SpacingBetweenSlices"))))
    return out


# frame type lives in a modality-specific sequence; any of these carries FrameType
_FRAME_TYPE = ("*FrameTypeSequence", "FrameType")


def assemble_volumes(records_by_series: dict[str, list[InstanceRecord]], dicom_root: Path, *,
                     image_types: Sequence[str] | None) -> tuple[list[AssembledVolume], list[SeriesRefusal]]:
    """Assemble every series (classic slices, or one Enhanced object) or refuse it with a reason.

    Args:
        records_by_series: the job's selected records, grouped by SeriesInstanceUID.
        dicom_root: folder the records' paths are relative to.
        image_types: accepted first values of ImageType (None: any).
    """
    volumes: list[AssembledVolume] = []
    refusals: list[SeriesRefusal] = []
    for uid in sorted(records_by_series):
        records = records_by_series[uid]
        multi = [r for r in records if r.number_of_frames > 1 or r.enhanced]
        if multi and len(records) > 1:
            refusals.append(SeriesRefusal(uid, "unsupported_multiframe", f"series {uid}: {len(multi)} multi-frame "
                                          f"object(s) mixed with {len(records) - len(multi)} other file(s)", len(records)))
            continue
        if multi:
            path = dicom_root / multi[0].path
            slices = frame_geometries(path, key=multi[0].path)
            if isinstance(slices, GeometryRefusal):
                refusals.append(SeriesRefusal(uid, slices.reason_code, f"series {uid}: {slices.detail}", 1))
                continue
        else:
            slices = [slice_geometry(r) for r in records]
        result = assess_slices(slices, series=uid, image_types=image_types)
        if isinstance(result, GeometryRefusal):
            refusals.append(SeriesRefusal(uid, result.reason_code, result.detail, len(records)))
            continue
        if multi:
            volumes.append(AssembledVolume(uid, multi[0], result, (path.absolute(),), frames=result.order))
        else:
            if all(records[k].constant for k in result.order):
                refusals.append(SeriesRefusal(uid, "constant_volume", f"series {uid}: every slice holds one value",
                                              len(records)))
                continue
            ordered = tuple((dicom_root / records[k].path).absolute() for k in result.order)
            dropped = tuple(ExcludedInstance(records[k].path, records[k].sop_instance_uid, code, detail)
                            for k, code, detail in result.dropped)
            volumes.append(AssembledVolume(uid, records[result.order[0]], result, ordered, dropped=dropped))
    return volumes, refusals


def decode_volume(volume: AssembledVolume) -> np.ndarray:
    """Voxels in modality units (rescale applied, no window), float32 ``[slices, rows, columns]``.

    Raises:
        UserError: a file cannot be decoded, or highdicom places an Enhanced object's frames
            differently from the assessed geometry.
    """
    if not volume.enhanced:
        from ai4hi_sdk.data.transforms import load_pixels

        return np.stack([load_pixels(p, apply_voi=False) for p in volume.slice_paths]).astype(np.float32)
    import highdicom as hd

    path = volume.slice_paths[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = hd.Image.from_dataset(dicomio.dcmread(path), copy=False)
            hd_volume = image.get_volume(dtype=np.float32, apply_real_world_transform=False,
                                         apply_modality_transform=None, apply_voi_transform=False,
                                         apply_presentation_lut=False, apply_palette_color_lut=False,
                                         apply_icc_profile=False)
    except Exception as err:  # noqa: BLE001 - highdicom raises several types for unusual objects
        raise UserError(f"{path}: cannot stack the frames of series {volume.series_instance_uid}: "
                        f"{type(err).__name__}: {err}") from err
    if hd_volume.spatial_shape != volume.geometry.shape or not np.allclose(
            hd_volume.affine, volume.geometry.affine, atol=1e-3):
        raise UserError(f"{path}: highdicom places the frames of series {volume.series_instance_uid} "
                        "differently from their functional groups; not used")
    return np.asarray(hd_volume.array, dtype=np.float32)


def _item(fg, shared, sequence: str, keyword: str):
    """``keyword`` of the first item of ``sequence`` in the frame's groups, else the shared ones."""
    for groups in (fg, shared):
        if groups is None:
            continue
        names = [sequence] if not sequence.startswith("*") else [
            k for k in groups.dir() if k.endswith(sequence[1:])]
        for name in names:
            seq = groups.get(name)
            if seq:
                value = seq[0].get(keyword)
                if value is not None:
                    return value
    return None



def _float(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _int(value) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def group_by_series(records: Iterable[InstanceRecord]) -> dict[str, list[InstanceRecord]]:
    """Records keyed by SeriesInstanceUID (path order kept)."""
    out: dict[str, list[InstanceRecord]] = {}
    for record in records:
        out.setdefault(record.series_instance_uid, []).append(record)
    return out

"""Series -> volume geometry: slice order, spacing and affine from the patient-space headers.

Pure core (numpy + highdicom's spatial helpers; no pixel data). :func:`assess_slices` takes the
geometry of every slice (or frame) of one series and returns a :class:`VolumeGeometry`, or a
:class:`GeometryRefusal` with a reason code of :data:`REFUSAL_REASONS` and a detail naming the
series and the numbers measured.

Convention (one for every volume and its mask, that of highdicom's ``Volume``):

* array axes ``[slice k, row i, column j]``; rows and columns as stored in the DICOM frame;
* slices ordered by increasing ``d = ImagePositionPatient . n`` with the slice normal
  ``n = column cosines x row cosines`` (ImageOrientationPatient's second triplet cross its first).
  For an axial series with orientation (1, 0, 0, 0, 1, 0), n points to the feet: slice 0 is the
  most superior (head) slice. ``(n, column, row)`` is right-handed. InstanceNumber only breaks
  ties of ``d`` (which are then refused as duplicate positions): numbering never decides order;
* ``affine`` (4 x 4) maps ``(k, i, j, 1)`` to DICOM patient coordinates (LPS, mm) of the voxel
  centre: ``x = p0 + k * s * n + i * dr * column + j * dc * row`` with ``p0`` the first slice's
  ImagePositionPatient, ``s`` the slice spacing and ``(dr, dc)`` PixelSpacing;
* ``spacing`` is ``(s, dr, dc)`` in mm, where ``s`` is measured from the positions (first to last
  over n - 1 steps along n), never taken from SliceThickness.

LOCALIZER / PROJECTION images and images of an ImageType the job does not train on (e.g. DERIVED)
are left out of a series' stack, named (``dropped``); a series of nothing else is refused. Refused
(the reason codes): fewer than two slices, missing geometry, mixed sizes / pixel spacing / frames of
reference, more than one orientation, two slices at one position, steps not along the normal (a
gantry tilt or sheared stack: angle over 2.6 degrees, highdicom's tolerance), a gap (a step over
1.5 x the median: missing slices), steps differing by over 1 % of the mean, and a
SpacingBetweenSlices header that disagrees with the measured step by over 1 %. A series is
never resampled to hide one of these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: reason code -> what it means (the detail says which series and by how much)
REFUSAL_REASONS: dict[str, str] = {
    "too_few_slices": "fewer than 2 slices: no volume",
    "no_geometry": "ImagePositionPatient, ImageOrientationPatient, PixelSpacing or FrameOfReferenceUID missing",
    "mixed_sizes": "slices of different Rows x Columns",
    "mixed_pixel_spacing": "slices of different PixelSpacing",
    "mixed_frames_of_reference": "slices in different frames of reference",
    "multiple_orientations": "more than one ImageOrientationPatient (e.g. radial or multi-plane scouts)",
    "not_a_slice": "LOCALIZER or PROJECTION IMAGE: not a slice of a volume",
    "image_type": "ImageType the job does not train on (e.g. DERIVED)",
    "duplicate_position": "two slices at one position along the normal (several phases or echoes?)",
    "tilted": "slice positions do not advance along the slice normal (gantry tilt or shear)",
    "gap": "a step over 1.5 x the median step: slices missing",
    "irregular_spacing": "steps along the normal differ by more than 1 %",
    "spacing_mismatch": "SpacingBetweenSlices disagrees with the measured step",
    "unsupported_multiframe": "multi-frame object whose frames cannot be stacked (variant not supported)",
    "no_mask_match": "the mask does not lie on the image volume's grid or frame of reference",
    "constant_volume": "every voxel holds the same value",
}

GAP_FACTOR = 1.5
SPACING_RTOL = 0.01
#: highdicom's default: |cos(angle between a step and the normal)| must be within this of 1
PERPENDICULAR_TOL = 1e-3
ORIENTATION_TOL = 1e-4
_POSITION_TIE_MM = 1e-3
_NOT_A_SLICE = ("LOCALIZER", "PROJECTION IMAGE")


@dataclass(frozen=True)
class SliceGeometry:
    """Patient-space header of one slice (a classic file, or one frame of an Enhanced object).

    ``position``: ImagePositionPatient (mm, LPS); ``orientation``: ImageOrientationPatient (row then
    column cosines); ``pixel_spacing``: (between rows, between columns) mm. ``key`` identifies the
    slice in messages (a path, or 'frame 3').
    """

    key: str
    rows: int
    columns: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    frame_of_reference_uid: str = ""
    instance_number: int | None = None
    image_type: tuple[str, ...] = ()
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a volume's voxels lie (module docstring: the convention).

    ``order[k]`` is the index (in the input sequence) of the slice that becomes slice ``k``;
    ``dropped`` lists the input slices left out (localizers, projections, image types the job does
    not take); ``shape`` is ``(slices, rows, columns)``; ``notes`` record header values that disagree with the
    measured geometry without making it wrong (SliceThickness differing from the step).
    """

    order: tuple[int, ...]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray = field(compare=False)
    frame_of_reference_uid: str
    notes: tuple[str, ...] = ()
    #: slices left out of the stack: (input index, reason code, detail naming the series)
    dropped: tuple[tuple[int, str, str], ...] = ()

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (LPS)."""
        return self.affine[:3, 0] / np.linalg.norm(self.affine[:3, 0])


@dataclass(frozen=True)
class GeometryRefusal:
    """Why a series is no volume. ``reason_code`` is a key of :data:`REFUSAL_REASONS`."""

    reason_code: str
    detail: str


def slice_normal(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """Unit normal ``column x row`` of an ImageOrientationPatient (highdicom's volume convention)."""
    from highdicom.spatial import VOLUME_INDEX_CONVENTION, get_normal_vector

    n = get_normal_vector([float(v) for v in orientation], index_convention=VOLUME_INDEX_CONVENTION)
    return n / np.linalg.norm(n)


def volume_affine(first_position: Sequence[float] | np.ndarray, orientation: Sequence[float] | np.ndarray,
                  pixel_spacing: Sequence[float], slice_spacing: float) -> np.ndarray:
    """4 x 4 affine of the convention: ``(k, i, j, 1)`` -> LPS mm (highdicom computes it)."""
    from highdicom.spatial import VOLUME_INDEX_CONVENTION, create_affine_matrix_from_attributes

    return create_affine_matrix_from_attributes(
        image_position=[float(v) for v in first_position], image_orientation=[float(v) for v in orientation],
        pixel_spacing=[float(v) for v in pixel_spacing], spacing_between_slices=float(slice_spacing),
        index_convention=VOLUME_INDEX_CONVENTION, slices_first=True)


def assess_slices(slices: Sequence[SliceGeometry], *, series: str,
                  image_types: Sequence[str] | None = ("ORIGINAL",)) -> VolumeGeometry | GeometryRefusal:
    """Order, spacing and affine of one series' slices, or why they are no volume.

    Args:
        slices: every slice of the series, in any order.
        series: how to name the series in a refusal (its Series Instance UID).
        image_types: accepted first values of ImageType (None: any). Other slices, and LOCALIZER /
            PROJECTION IMAGE slices whatever this says, are left out of the stack (``dropped``); a
            series of nothing else is refused with that reason.
    """

    def refuse(code: str, detail: str) -> GeometryRefusal:
        return GeometryRefusal(code, f"series {series}: {detail}")

    # localizers, projections and image types the job does not take are left out of the stack
    dropped: list[tuple[int, str, str]] = []
    for k, s in enumerate(slices):
        marked = [t for t in _NOT_A_SLICE if t in s.image_type]
        if marked:
            dropped.append((k, "not_a_slice", f"{s.key} is a {marked[0]} (ImageType {chr(92).join(s.image_type)})"))
        elif image_types is not None and (s.image_type[0] if s.image_type else "(none)") not in image_types:
            dropped.append((k, "image_type", f"{s.key} has ImageType {chr(92).join(s.image_type) or '(none)'}; "
                                             f"the job trains on {' or '.join(image_types)}"))
    if dropped and len(dropped) == len(slices):
        return refuse(dropped[0][1], f"all {len(slices)} images left out, e.g. {dropped[0][2]}")
    index = [k for k in range(len(slices)) if k not in {d[0] for d in dropped}]
    slices = [slices[k] for k in index]
    if len(slices) < 2:
        return refuse("too_few_slices", f"{len(slices)} slice(s)" + (f" ({len(dropped)} left out)" if dropped else ""))
    sizes = sorted({(s.rows, s.columns) for s in slices})
    if len(sizes) > 1:
        return refuse("mixed_sizes", "slices of " + ", ".join(f"{r}x{c}" for r, c in sizes) + " pixels")
    missing = [s.key for s in slices if s.position is None or s.orientation is None or s.pixel_spacing is None
               or not s.frame_of_reference_uid]
    if missing:
        return refuse("no_geometry", f"{len(missing)} slice(s) lack position, orientation, pixel spacing or "
                                     f"frame of reference, e.g. {missing[0]}")
    if len({s.frame_of_reference_uid for s in slices}) > 1:
        return refuse("mixed_frames_of_reference", f"{len({s.frame_of_reference_uid for s in slices})} "
                                                   "FrameOfReferenceUIDs")
    orientations = _clusters([np.asarray(s.orientation, dtype=np.float64) for s in slices], ORIENTATION_TOL)
    if len(orientations) > 1:
        return refuse("multiple_orientations", f"{len(orientations)} different ImageOrientationPatient values "
                                               f"among {len(slices)} slices")
    spacings = _clusters([np.asarray(s.pixel_spacing, dtype=np.float64) for s in slices], 1e-4)
    if len(spacings) > 1:
        return refuse("mixed_pixel_spacing", f"{len(spacings)} different PixelSpacing values")

    orientation = np.asarray(slices[0].orientation, dtype=np.float64)
    normal = slice_normal(orientation)
    positions = np.array([s.position for s in slices], dtype=np.float64)
    distance = positions @ normal
    order = sorted(range(len(slices)), key=lambda k: (round(distance[k] / _POSITION_TIE_MM),
                                                      slices[k].instance_number or 0, slices[k].key))
    d = distance[order]
    steps = np.diff(d)
    tied = np.flatnonzero(steps < _POSITION_TIE_MM)
    if tied.size:
        a, b = slices[order[tied[0]]], slices[order[tied[0] + 1]]
        return refuse("duplicate_position", f"{tied.size + 1} slices share positions, e.g. {a.key} "
                                            f"(InstanceNumber {a.instance_number}) and {b.key} "
                                            f"(InstanceNumber {b.instance_number}) at {d[tied[0]]:.3f} mm along the normal")
    vectors = np.diff(positions[order], axis=0)
    cosines = np.abs(vectors @ normal) / np.linalg.norm(vectors, axis=1)
    if (1.0 - cosines).max() > PERPENDICULAR_TOL:
        angle = math.degrees(math.acos(float(np.clip(cosines.min(), -1.0, 1.0))))
        return refuse("tilted", f"slices advance {angle:.1f} degrees off the slice normal (gantry tilt or "
                                "sheared stack); resample it to an orthogonal volume first")
    median = float(np.median(steps))
    if steps.max() > GAP_FACTOR * median:
        k = int(steps.argmax())
        return refuse("gap", f"a {steps[k]:.2f} mm step between {slices[order[k]].key} and "
                             f"{slices[order[k + 1]].key}, median step {median:.3f} mm "
                             f"(about {round(steps[k] / median) - 1} slice(s) missing)")
    spacing = float((d[-1] - d[0]) / (len(d) - 1))
    if np.abs(steps - spacing).max() > SPACING_RTOL * spacing:
        return refuse("irregular_spacing", f"steps from {steps.min():.3f} to {steps.max():.3f} mm "
                                           f"(more than {SPACING_RTOL:.0%} apart)")
    declared = slices[0].spacing_between_slices
    if declared and abs(abs(declared) - spacing) > SPACING_RTOL * spacing:
        return refuse("spacing_mismatch", f"SpacingBetweenSlices {declared:g} mm, positions step {spacing:.4f} mm")
    disagreement = _highdicom_disagrees(positions, orientation, order, spacing)
    if disagreement:
        return refuse("irregular_spacing", disagreement)

    notes = []
    thickness = slices[0].slice_thickness
    if thickness and abs(thickness - spacing) > SPACING_RTOL * spacing:
        kind = "overlapping slices" if thickness > spacing else "gaps between slices"
        notes.append(f"SliceThickness {thickness:g} mm differs from the {spacing:.4f} mm step ({kind}); "
                     "the step is used")
    pixel_spacing = tuple(float(v) for v in slices[0].pixel_spacing)  # type: ignore[union-attr]
    affine = volume_affine(positions[order[0]], orientation, pixel_spacing, spacing)
    return VolumeGeometry(order=tuple(index[k] for k in order), shape=(len(slices), slices[0].rows, slices[0].columns),
                          spacing=(spacing, pixel_spacing[0], pixel_spacing[1]), affine=affine,
                          frame_of_reference_uid=slices[0].frame_of_reference_uid, notes=tuple(notes),
                          dropped=tuple((k, code, f"series {series}: {detail}") for k, code, detail in dropped))


def _highdicom_disagrees(positions: np.ndarray, orientation: np.ndarray, order: list[int],
                         spacing: float) -> str | None:
    """highdicom's own volume test must agree with the checks above: same order, same spacing."""
    from highdicom.spatial import VOLUME_INDEX_CONVENTION, get_volume_positions

    hd_spacing, indices = get_volume_positions(positions.tolist(), orientation.tolist(), rtol=SPACING_RTOL,
                                               perpendicular_tol=PERPENDICULAR_TOL,
                                               index_convention=VOLUME_INDEX_CONVENTION)
    if hd_spacing is None or indices is None:
        return "highdicom finds no regularly spaced volume in these positions"
    hd_order = sorted(range(len(indices)), key=lambda k: indices[k])
    if hd_order != order or not math.isclose(hd_spacing, spacing, rel_tol=1e-6):
        return f"highdicom orders or spaces the slices differently ({hd_spacing:.4f} mm)"
    return None


def _clusters(vectors: list[np.ndarray], tol: float) -> list[np.ndarray]:
    """Distinct vectors (max-abs difference over ``tol``), in first-seen order."""
    out: list[np.ndarray] = []
    for v in vectors:
        if not any(np.abs(v - u).max() <= tol for u in out):
            out.append(v)
    return out

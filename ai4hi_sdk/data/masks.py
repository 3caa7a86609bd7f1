"""Segmentation masks matched to an image volume by geometry, never by slice index alone.

Three forms, named in ``labels.csv``'s mask column (a path relative to the site folder) or, for
DICOM SEG, also found by the scan (a SEG object referencing the series):

* DICOM SEG (any file that is not ``.npy`` / ``.npz``): read with highdicom; its frame of reference
  must be the image's, and its frames are placed on the image volume's grid by their positions
  (highdicom's ``match_geometry``: permuting, flipping, cropping or padding, never resampling).
  Every segment counts as foreground (a binary task);
* ``.npz`` with arrays ``mask`` ``[D, H, W]`` and ``affine`` (4 x 4, voxel index -> LPS mm) and,
  optionally, ``frame_of_reference_uid``: matched like a SEG;
* ``.npy``: a bare array, which carries no geometry: it must already be in the volume convention
  of :mod:`~ai4hi_sdk.data.geometry` (slices ordered along the normal column x row) and have the
  volume's shape.

:func:`load_mask` returns a uint8 ``[D, H, W]`` array on the image's grid, or raises a
:class:`~ai4hi_sdk.errors.UserError` naming the mask file, the series and the mismatch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ai4hi_sdk.data.geometry import VolumeGeometry
from ai4hi_sdk.errors import UserError

#: relative tolerance of direction cosines, voxel sizes and offsets (in voxels) when matching grids
GRID_TOL = 1e-3


def load_mask(path: Path, geometry: VolumeGeometry, *, series: str) -> np.ndarray:
    """The mask of ``series`` on its image grid, uint8 ``[D, H, W]`` in {0, 1}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask file of series {series} not found: {path}")
    if path.suffix == ".npy":
        mask = np.load(path, allow_pickle=False)
        if mask.shape != geometry.shape:
            raise UserError(f"mask {path} has shape {mask.shape}, series {series} has {geometry.shape} "
                            "(slices, rows, columns); a .npy mask must follow the volume convention "
                            "(give a DICOM SEG or an .npz with its affine to match by position)")
        return (mask != 0).astype(np.uint8)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "mask" not in data or "affine" not in data:
                raise UserError(f"mask {path}: an .npz mask needs the arrays 'mask' and 'affine' (has "
                                f"{sorted(data.files)})")
            mask, affine = data["mask"], data["affine"]
            frame_of_reference = str(data["frame_of_reference_uid"]) if "frame_of_reference_uid" in data else None
        return _match(mask, affine, frame_of_reference, geometry, path=path, series=series)
    return _load_seg(path, geometry, series=series)


def _load_seg(path: Path, geometry: VolumeGeometry, *, series: str) -> np.ndarray:
    import highdicom as hd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(path)
            frame_of_reference = str(seg.get("FrameOfReferenceUID", "") or "")
            if frame_of_reference and frame_of_reference != geometry.frame_of_reference_uid:
                raise UserError(f"mask {path}: SEG frame of reference {frame_of_reference} is not that of "
                                f"series {series} ({geometry.frame_of_reference_uid})")
            volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True, dtype=np.uint8)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - not a SEG, or frames that form no volume
        raise UserError(f"mask {path} of series {series}: not a DICOM SEG whose frames form a volume "
                        f"({type(err).__name__}: {err})") from err
    return _match(np.asarray(volume.array), volume.affine, frame_of_reference, geometry, path=path, series=series)


def _match(mask: np.ndarray, affine: np.ndarray, frame_of_reference: str | None, geometry: VolumeGeometry, *,
           path: Path, series: str) -> np.ndarray:
    """Put ``mask`` (with its own affine) on the image's grid without resampling."""
    import highdicom as hd

    if frame_of_reference and frame_of_reference != geometry.frame_of_reference_uid:
        raise UserError(f"mask {path}: frame of reference {frame_of_reference} is not that of series {series}")
    if mask.ndim != 3 or np.asarray(affine).shape != (4, 4):
        raise UserError(f"mask {path}: expected a 3D mask and a 4 x 4 affine, got {mask.shape} and "
                        f"{np.asarray(affine).shape}")
    target = hd.VolumeGeometry(geometry.affine, geometry.shape, "PATIENT",
                               frame_of_reference_uid=geometry.frame_of_reference_uid or None)
    source = hd.Volume(np.asarray(mask != 0, dtype=np.uint8), np.asarray(affine, dtype=np.float64), "PATIENT")
    if not np.allclose(sorted(source.spacing), sorted(target.spacing), rtol=GRID_TOL):
        raise UserError(f"mask {path}: voxel size {_mm(source.spacing)} mm, series {series} has "
                        f"{_mm(target.spacing)} mm (masks are never resampled)")
    try:
        matched = source.match_geometry(target, tol=GRID_TOL)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"mask {path} does not lie on the voxel grid of series {series} "
                        f"(no permutation, flip, crop or pad maps one onto the other): {err}") from err
    return np.asarray(matched.array, dtype=np.uint8)


def _mm(spacing) -> str:
    return " x ".join(f"{float(v):.4g}" for v in spacing)

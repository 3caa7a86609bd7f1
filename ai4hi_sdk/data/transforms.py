"""Pixel loading and MONAI transform pipelines for 2D classification.

:func:`load_pixels` turns a DICOM file into the image a radiologist would see (stored values
-> modality LUT -> VOI LUT / window -> MONOCHROME1 inverted, so bright is always dense).
:func:`classification_transforms` then normalises intensity robustly, resizes, and (for
training only) augments. The deterministic and random halves are exposed separately so a
dataset can cache the former and re-run only the latter every epoch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.transforms import (
    Compose,
    EnsureType,
    RandAffine,
    RandFlip,
    RandGaussianNoise,
    Resize,
    ScaleIntensityRangePercentiles,
)
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from ai4hi_sdk.data.dicomio import open_source, read_frame
from ai4hi_sdk.errors import UserError

# Robust intensity window: the 1st..99th percentile maps to [0, 1]; outliers (markers,
# burned-in text, collimator edges) do not squash the anatomy.
LOWER_PERCENTILE = 1.0
UPPER_PERCENTILE = 99.0


def load_pixels(path: Path, *, frame: int = 0, apply_voi: bool = True) -> np.ndarray:
    """Decode one DICOM image into presentation values.

    Only frame ``frame`` is read and decoded (plain or gzipped files). Applies, in DICOM order:
    the modality LUT (RescaleSlope/Intercept or Modality LUT
    Sequence), then the VOI LUT or the first WindowCenter/WindowWidth if present and
    ``apply_voi``, then inverts MONOCHROME1 so that higher always means brighter. Colour
    images are converted to luminance (ITU-R BT.601 weights).

    Args:
        path: DICOM file.
        frame: frame index for multi-frame images.
        apply_voi: apply the VOI LUT / window (turn off to get modality units, e.g. HU).

    Returns:
        float32 array [H, W] (units: modality units, or the window's output range).

    Raises:
        UserError: the file cannot be read or decoded, or ``frame`` is out of range.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = open_source(Path(path))
            ds = pydicom.dcmread(source, stop_before_pixels=True)
    except Exception as err:  # noqa: BLE001 - reader errors come in many types
        raise UserError(f"cannot decode pixel data of {path}: {type(err).__name__}: {err}") from err
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if not 0 <= frame < frames:
        raise UserError(f"{path}: frame {frame} out of range (image has {frames} frames)")
    try:
        arr = read_frame(source, frame, raw=False)  # only this frame is read and decoded
    except Exception as err:  # noqa: BLE001 - decoder errors come in many types
        raise UserError(f"cannot decode pixel data of {path}: {type(err).__name__}: {err}") from err
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        arr, samples = apply_color_lut(arr, ds), 3
    if samples > 1:  # pydicom already converted YBR to RGB: [H, W, 3]
        rgb = arr.astype(np.float64)
        return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.float32)
    return _grey_presentation(arr, ds, apply_voi=apply_voi).astype(np.float32)


def _grey_presentation(arr: np.ndarray, ds: Dataset, *, apply_voi: bool) -> np.ndarray:
    out = apply_modality_lut(arr, ds)
    lo, hi = _modality_range(ds)
    if apply_voi and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        try:
            windowed = apply_voi_lut(out, ds, index=0)
        except (ValueError, TypeError, AttributeError, IndexError) as err:
            # Broken window headers are common; modality values are still usable because
            # the training pipeline normalises intensities anyway.
            warnings.warn(f"VOI LUT not applied ({err}); using modality values", stacklevel=3)
        else:
            if "VOILUTSequence" in ds and "WindowCenter" not in ds:
                bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                lo, hi = 0.0, float(2**bits - 1)
            out = windowed
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = (lo + hi) - np.asarray(out, dtype=np.float64)
    return np.asarray(out)


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """Nominal (min, max) after the modality LUT; also pydicom's windowing output range."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits_stored - 1)
    else:
        lo, hi = float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    a, b = lo * slope + intercept, hi * slope + intercept
    return min(a, b), max(a, b)


def preprocess_transforms(image_size: int) -> Compose:
    """Deterministic part: [1, H, W] array -> [1, S, S] float32 in [0, 1]."""
    return Compose(
        [
            ScaleIntensityRangePercentiles(
                lower=LOWER_PERCENTILE, upper=UPPER_PERCENTILE, b_min=0.0, b_max=1.0, clip=True
            ),
            # 'area' averages when shrinking: no aliasing of fine texture.
            Resize((image_size, image_size), mode="area"),
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


def augment_transforms(image_size: int, *, flip: bool = True) -> Compose:
    """Random part (training only): small flip / rotation / shift / zoom and noise.

    Small on purpose: radiographs have a canonical orientation, large rotations or
    vertical flips would create images no scanner produces. ``flip=False`` leaves out the
    left-right flip: an image paired with its report must keep its laterality ("right lung").
    """
    shift = 0.05 * image_size
    return Compose(
        [
            *([RandFlip(prob=0.5, spatial_axis=1)] if flip else []),
            RandAffine(
                prob=0.7,
                rotate_range=(np.deg2rad(8.0),),
                translate_range=(shift, shift),
                scale_range=(0.08, 0.08),
                padding_mode="border",
            ),
            RandGaussianNoise(prob=0.3, mean=0.0, std=0.02),
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


def classification_transforms(image_size: int, *, train: bool, augment: bool) -> Compose:
    """Full pipeline for channel-first float arrays [1, H, W] -> tensor [1, S, S].

    Intensities are mapped to [0, 1] by the 1st/99th percentiles, the image is resized to
    (image_size, image_size), and random augmentation is added only if ``train and augment``.
    """
    stages = [preprocess_transforms(image_size)]
    if train and augment:
        stages.append(augment_transforms(image_size))
    return Compose(stages)

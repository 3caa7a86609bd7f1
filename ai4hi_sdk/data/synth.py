"""Synthetic consortium: real DICOM files for tests, demos and benchmarks.

No real patient data may be downloaded, so we write our own hospitals. Each site is a folder
``hospital-<k>/`` with ``dicom/`` (Part 10 files written by pydicom, Explicit VR Little
Endian) and ``labels.csv``. Sites differ the way real ones do: scanner vendor and model,
intensity calibration (gain, offset, gamma), noise level, CT geometry. A drift knob
(``intensity_shift``) shifts a site's intensities *without* updating its window headers,
as a silently recalibrated detector would.

Tasks:
* ``classification``: one 128x128 chest-radiograph-like CR/DX image per study (12-bit
  MONOCHROME2; body, lungs, heart, spine, ribs, texture, noise). Label 1 studies carry a
  bright round opacity of varied size and position in a lung field. ``labels.csv`` has
  columns ``StudyInstanceUID,label``. ``finding="subtle"`` replaces the opacity by a small,
  low-contrast nodule with a dark rim whose pixel sum is zero, and sets every image's mean
  intensity (before the detector response) from a label-independent draw, so mean brightness
  carries no signal. ``labelled_fraction < 1`` leaves the other studies without a label row
  (unlabelled studies, e.g. for self-supervised pretraining).
* ``segmentation``: one small CT volume per study (24 slices of 32x32, one file per slice,
  HU via RescaleSlope/Intercept) with round lesions. Each site's series carry the patient-space
  geometry of a real CT series shipped with pydicom (:data:`CT_GEOMETRIES`: orientation, pixel
  spacing, slice step, origin, and whether InstanceNumber runs along or against the slice
  order), so loaders must order and space slices by geometry. Masks are uint8 [slices, rows,
  cols]: odd sites write ``masks/<SeriesInstanceUID>.npy`` in the volume convention of
  :mod:`~ai4hi_sdk.data.geometry`, even sites ``.npz`` files holding the mask in InstanceNumber
  order with its own affine (matched by position). ``labels.csv`` has columns
  ``SeriesInstanceUID,mask``.

With ``reports=True`` (``ai4hi data synth --reports``) a classification site also gets a report per
study, consistent with its image (:mod:`~ai4hi_sdk.data.report_synth`): ``reports.csv`` rows for two of
every three studies, a DICOM SR object in the study for the third, and ``synthetic_report_truth.json``
(the ground truth per finding). Images and ``labels.csv`` are the same with or without reports.

Everything is a pure function of ``seed`` and the site index: same seed, same UIDs, same
bytes. A site's content does not depend on how many other sites are generated.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from collections.abc import Sequence
from typing import Literal, cast

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    generate_uid,
)
from scipy.ndimage import gaussian_filter

from ai4hi_sdk.data.report_synth import FindingPlacement, SrKind
from ai4hi_sdk.errors import UserError

Task = Literal["classification", "segmentation"]
TASKS: tuple[Task, ...] = ("classification", "segmentation")
Finding = Literal["opacity", "subtle"]
FINDINGS: tuple[Finding, ...] = ("opacity", "subtle")

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray, For Presentation
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")

#: ground truth of the synthetic reports (synthetic sites only: no hospital has such a file)
SYNTHETIC_REPORT_TRUTH = "synthetic_report_truth.json"
RADIOGRAPH_SIZE = 128  # pixels, square
RADIOGRAPH_SPACING_MM = 3.3  # ~43 cm detector over 128 pixels
CT_SHAPE = (24, 32, 32)  # slices, rows, columns
BITS_STORED = 12
MAX_STORED = 2**BITS_STORED - 1
CT_INTERCEPT = -1024.0

# Vendor cycle: hospital-1 GE, hospital-2 Siemens, hospital-3 Philips, hospital-4 Canon, ...
_VENDORS: tuple[tuple[str, str, str, float], ...] = (
    # Manufacturer header, X-ray model, CT model, X-ray kVp
    ("GE MEDICAL SYSTEMS", "Definium 8000", "LightSpeed VCT", 120.0),
    ("SIEMENS", "Ysio Max", "SOMATOM Definition AS", 125.0),
    ("Philips Medical Systems", "DigitalDiagnost", "Ingenuity CT", 110.0),
    ("CANON MEDICAL SYSTEMS", "RADREX-i", "Aquilion ONE", 115.0),
)

# Site calibration cycle: (gain, offset, gamma, noise sigma) on normalised [0, 1] intensity.
# Gamma and noise survive any linear intensity normalisation, so sites stay non-IID.
_CALIBRATION: tuple[tuple[float, float, float, float], ...] = (
    (1.00, 0.00, 1.00, 0.015),
    (0.85, 0.08, 1.20, 0.025),
    (1.10, -0.03, 0.85, 0.020),
    (0.95, 0.05, 1.10, 0.030),
)


@dataclass(frozen=True)
class CTGeometry:
    """Patient-space geometry of a real CT series, given to a synthetic one.

    ``first_position`` is ImagePositionPatient of slice 0 in the volume convention (slices along
    ``column cosines x row cosines``); ``step`` the distance between slices (mm, also written as
    SliceThickness); ``numbering_along``: InstanceNumber rises along the volume order (else against).
    """

    source: str
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    step: float
    first_position: tuple[float, float, float]
    numbering_along: bool

    def position(self, k: int) -> list[float]:
        """ImagePositionPatient (mm) of slice ``k`` in the volume convention."""
        row, col = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        normal = np.cross(col, row)
        return [round(float(v), 4) for v in np.array(self.first_position) + k * self.step * normal]

    def affine(self, depth: int) -> np.ndarray:
        """4 x 4 affine of the volume convention: (slice, row, column) index -> LPS mm."""
        row, col = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        out = np.eye(4)
        out[:3, 0] = np.cross(col, row) * self.step
        out[:3, 1] = col * self.pixel_spacing[0]
        out[:3, 2] = row * self.pixel_spacing[1]
        out[:3, 3] = self.first_position
        return out


#: one per site, cycled; values read from the headers of pydicom's test files (tests check them)
CT_GEOMETRIES: tuple[CTGeometry, ...] = (
    # dicomdirtests/98892001/CT5N: axial, 2.5 mm, InstanceNumber 6..10 while z falls 8.76 -> -1.24
    CTGeometry("pydicom dicomdirtests/98892001/CT5N", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.488281, 0.488281),
               2.5, (-72.199997, -143.0, 8.7625), numbering_along=True),
    # dicomdirtests/77654033/CT2 (its contiguous part): axial, 1.25 mm, InstanceNumber rising with z
    CTGeometry("pydicom dicomdirtests/77654033/CT2", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.488281, 0.488281),
               1.25, (-125.0, -128.100006, 105.519997), numbering_along=False),
    # pydicom-data eCT_Supplemental.dcm: rows run right-to-left (-1, 0, 0), 10 mm frames
    CTGeometry("pydicom-data eCT_Supplemental.dcm", (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.388672, 0.388672),
               10.0, (99.5, -301.5, -159.0), numbering_along=True),
    # CT_small.dcm: axial, 0.661468 mm pixels, 5 mm slices
    CTGeometry("pydicom CT_small.dcm", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.661468, 0.661468),
               5.0, (-158.135803, -179.035797, -75.699997), numbering_along=False),
)


@dataclass(frozen=True)
class SiteSummary:
    """What :func:`synth_site` wrote. ``mean_intensity`` is the mean stored pixel value."""

    name: str
    path: str
    task: Task
    studies: int
    series: int
    files: int
    positives: int | None
    manufacturer: str
    model: str
    modality: str
    intensity_shift: float
    mean_intensity: float
    #: studies with a row in labels.csv (None: segmentation)
    labelled: int | None = None


def site_name(site_index: int) -> str:
    """Folder name of the site at 0-based ``site_index``: 'hospital-<site_index + 1>'."""
    return f"hospital-{site_index + 1}"


# --------------------------------------------------------------------------- images


def chest_radiograph(
    rng: np.random.Generator, *, size: int = RADIOGRAPH_SIZE, positive: bool = False,
    finding: Finding = "opacity",
) -> np.ndarray:
    """A chest-radiograph-like image, float64 [size, size] in about [0, 1] (1 = dense).

    Anatomy is jittered per patient. If ``positive`` a round opacity (radius 5-10 % of the
    image, peak +0.55..0.75) is placed inside one lung field. With ``finding="subtle"`` see
    :func:`add_subtle_finding` instead (applied to every image: it also normalises the mean).
    """
    return chest_radiograph_with_placement(rng, size=size, positive=positive, finding=finding)[0]


def chest_radiograph_with_placement(
    rng: np.random.Generator, *, size: int = RADIOGRAPH_SIZE, positive: bool = False,
    finding: Finding = "opacity",
) -> tuple[np.ndarray, FindingPlacement | None]:
    """:func:`chest_radiograph` and where its opacity is (None when not ``positive``, and for the
    subtle finding, whose nodule reports do not describe).

    The placement is the patient's side (the image's left half shows the patient's right lung, as
    on a PA film), the third of that lung's height (upper / mid / lower) holding the opacity's
    centre and its diameter in mm at :data:`RADIOGRAPH_SPACING_MM` (for ``size`` 128). Computing it
    draws nothing from ``rng``: the image is the same as :func:`chest_radiograph`'s.
    """
    yy, xx = np.mgrid[0:size, 0:size] / size  # normalised coordinates in [0, 1)
    j = rng.normal(0.0, 1.0, size=8) * 0.015

    def ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0

    img = np.full((size, size), 0.05)
    body = ellipse(0.5 + j[0], 0.55, 0.47 + j[1], 0.62)
    img[body] = 0.55
    lungs = []
    for side, cx in ((0, 0.31), (1, 0.69)):
        lung = ellipse(cx + j[2 + side], 0.45 + j[4], 0.15 + j[5], 0.28 + j[6])
        lungs.append(lung)
        img[lung] = 0.20
    lung_any = lungs[0] | lungs[1]
    # Ribs: curved bands across the lungs, bright where the cosine peaks.
    period = 0.085 + j[7] * 0.3
    curve = 1.6 * (xx - 0.5) ** 2
    ribs = np.clip((np.cos(2 * np.pi * (yy + curve) / period) - 0.35) / 0.65, 0, 1)
    img += 0.12 * ribs * lung_any
    heart = ellipse(0.54 + j[0], 0.62, 0.13 + j[1], 0.15)
    img[heart] = 0.60
    img[(np.abs(xx - 0.5 - j[0]) < 0.045) & body] = 0.72  # spine / mediastinum
    # Parenchymal texture: low-pass noise.
    img += 0.03 * gaussian_filter(rng.normal(size=(size, size)), 2.0) / 0.14
    placement = None
    if finding == "subtle":
        img = add_subtle_finding(img, rng, lungs, positive=positive)
    elif positive:
        which = int(rng.integers(2))
        lung = lungs[which]
        ys, xs = np.nonzero(lung)
        # Keep the centre well inside the lung: sample among the inner half of lung pixels.
        centre_dist = np.hypot(ys - ys.mean(), xs - xs.mean())
        inner = np.flatnonzero(centre_dist <= np.median(centre_dist))
        k = inner[int(rng.integers(inner.size))]
        cy, cx = ys[k] / size, xs[k] / size
        radius = rng.uniform(0.05, 0.10)
        peak = rng.uniform(0.55, 0.75)  # brighter than the spine: learnable by a small CNN in a minute
        d = np.hypot(xx - cx, yy - cy) / radius
        img += peak * np.clip(1.5 - d, 0.0, 1.0) ** 0.7  # flat core, soft edge
        third = (ys[k] - ys.min()) / max(ys.max() - ys.min(), 1)
        placement = FindingPlacement(
            side="right" if which == 0 else "left",
            zone="upper" if third < 1 / 3 else "mid" if third < 2 / 3 else "lower",
            diameter_mm=int(round(2 * radius * RADIOGRAPH_SIZE * RADIOGRAPH_SPACING_MM)))  # the film is 422 mm wide
    return gaussian_filter(img, 0.8), placement


#: mean normalised intensity of a "subtle" study before the detector response (mean, sd), drawn
#: for every study independently of its label
SUBTLE_MEAN = (0.40, 0.03)
#: peak contrast of the subtle nodule's core (uniform range, normalised intensity)
SUBTLE_PEAK = (0.25, 0.40)
#: its core's Gaussian sigma as a fraction of the image side (uniform range); the rim's is 2x
SUBTLE_SIGMA = (0.06, 0.08)


def add_subtle_finding(
    img: np.ndarray, rng: np.random.Generator, lungs: list[np.ndarray], *, positive: bool
) -> np.ndarray:
    """The "subtle" task: a small low-contrast nodule, and a label-free image mean.

    A positive image gets, inside one lung field, a difference of Gaussians: a small core (sigma
    6-8 % of the image side, peak +0.25..0.40, against +0.55..0.75 for the opacity) with a dark
    rim (sigma 2x), its pixel sum made exactly zero, so it adds nothing to the image mean. Every
    image, positive or not, is then shifted to a mean drawn from :data:`SUBTLE_MEAN`: mean
    brightness carries no information about the label (AUROC ~0.5,
    ``tests/data/test_synth_foundation.py``); a random-init ViT with a linear probe is at chance too
    (``benchmarks/label_efficiency.py``), while a small CNN learns it from a few hundred labels.
    """
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    target_mean = rng.normal(*SUBTLE_MEAN)  # drawn for every image: the same stream either way
    if positive:
        lung = lungs[int(rng.integers(2))]
        ys, xs = np.nonzero(lung)
        centre_dist = np.hypot(ys - ys.mean(), xs - xs.mean())
        inner = np.flatnonzero(centre_dist <= np.median(centre_dist))
        k = inner[int(rng.integers(inner.size))]
        sigma = rng.uniform(*SUBTLE_SIGMA) * size
        peak = rng.uniform(*SUBTLE_PEAK)
        r2 = (yy - ys[k]) ** 2 + (xx - xs[k]) ** 2
        core = np.exp(-r2 / (2 * sigma**2))
        rim = np.exp(-r2 / (2 * (2 * sigma) ** 2))
        dog = core - rim * core.sum() / rim.sum()  # zero pixel sum
        img = img + peak * dog / dog.max()
    return img - img.mean() + target_mean


def ct_volume(
    rng: np.random.Generator, shape: tuple[int, int, int] = CT_SHAPE, *, lesions: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like volume and its lesion mask.

    A body cylinder of soft tissue (~40 HU) in air (-1000 HU) holding ``lesions`` ellipsoids
    (~+90 HU, radii 2-5 voxels) and correlated noise. Written in numpy rather than with
    ``monai.data.synthetic`` to keep ``ai4hi data synth`` free of the 5 s monai import.

    Returns:
        (hu, mask): float64 [slices, rows, cols] in Hounsfield units, and uint8 mask of the
        same shape (1 = lesion).
    """
    depth, rows, cols = shape
    zz, yy, xx = np.mgrid[0:depth, 0:rows, 0:cols].astype(np.float64)
    body = np.hypot((yy - rows / 2) / (rows * 0.45), (xx - cols / 2) / (cols * 0.45)) <= 1.0
    mask = np.zeros(shape, dtype=bool)
    for _ in range(lesions):
        radii = rng.uniform(2.0, 5.0, size=3) * np.array([0.8, 1.0, 1.0])
        # Centre inside the body, at least one radius from the volume edges.
        while True:
            centre = rng.uniform(radii, np.array(shape) - radii)
            if body[tuple(int(c) for c in centre)]:
                break
        mask |= (
            ((zz - centre[0]) / radii[0]) ** 2
            + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2
        ) <= 1.0
    mask &= body
    hu = np.where(body, 40.0, -1000.0) + 50.0 * mask
    hu += gaussian_filter(rng.normal(0, 10.0, size=shape), 1.0) * body
    return hu, mask.astype(np.uint8)


def calibrate(
    img: np.ndarray, site_index: int, rng: np.random.Generator, *, intensity_shift: float = 0.0
) -> np.ndarray:
    """Apply site ``site_index``'s detector response; returns uint16 stored values 0..4095.

    ``img`` is normalised intensity (about [0, 1]); ``intensity_shift`` is added after the
    site response, in the same units (0.1 = +10 % of the full stored range).
    """
    gain, offset, gamma, noise = _CALIBRATION[site_index % len(_CALIBRATION)]
    x = gain * np.clip(img, 0.0, None) ** gamma + offset
    x = x + rng.normal(0.0, noise, size=img.shape) + intensity_shift
    return np.round(np.clip(x, 0.0, 1.0) * MAX_STORED).astype(np.uint16)


def calibrate_ct(
    hu: np.ndarray, site_index: int, rng: np.random.Generator, *, intensity_shift: float = 0.0
) -> np.ndarray:
    """Apply site ``site_index``'s CT response to HU; returns uint16 stored values.

    Stored = HU - RescaleIntercept (-1024), clipped to 12 bits. ``intensity_shift`` is in
    units of a 400 HU soft-tissue window (0.1 = +40 HU).
    """
    gain, offset, _, noise = _CALIBRATION[site_index % len(_CALIBRATION)]
    hu_site = (1.0 + 0.3 * (gain - 1.0)) * hu + 200.0 * offset  # mild miscalibration
    hu_site = hu_site + rng.normal(0.0, 800.0 * noise, size=hu.shape) + 400.0 * intensity_shift
    return np.clip(np.round(hu_site - CT_INTERCEPT), 0, MAX_STORED).astype(np.uint16)


# --------------------------------------------------------------------------- DICOM


def _uid(seed: int, *parts: object) -> UID:
    return generate_uid(entropy_srcs=[f"ai4hi-synth:{seed}", *map(str, parts)])


def _base_dataset(
    *,
    sop_class: UID,
    sop_uid: UID,
    study_uid: UID,
    series_uid: UID,
    patient_id: str,
    sex: str,
    age: int,
    study_date: date,
    modality: str,
    manufacturer: str,
    model: str,
    institution: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = ""
    ds.ManufacturerModelName = model
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    return ds


def _write(ds: Dataset, path: Path, pixels: np.ndarray) -> None:
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _patient(rng: np.random.Generator) -> tuple[str, int]:
    sex = str(rng.choice(["F", "M", "O"], p=[0.49, 0.49, 0.02]))
    # Mostly adults, a few children so every age band is represented.
    age = int(rng.integers(5, 18)) if rng.random() < 0.05 else int(rng.integers(18, 95))
    return sex, age


def synth_site(
    site_dir: Path,
    *,
    site_index: int,
    task: Task = "classification",
    n_studies: int = 40,
    seed: int = 0,
    intensity_shift: float = 0.0,
    manufacturer: str | None = None,
    model: str | None = None,
    overwrite: bool = False,
    reports: bool = False,
    labelled_fraction: float = 1.0,
    finding: Finding = "opacity",
) -> SiteSummary:
    """Write one synthetic site into ``site_dir`` (``dicom/``, ``labels.csv``, ``masks/``).

    Args:
        site_dir: the site folder, normally ``<out>/hospital-<site_index + 1>``.
        site_index: 0-based position in the consortium (0 is hospital-1); picks vendor,
            calibration and the site's random stream.
        task: 'classification' (one radiograph per study) or 'segmentation' (CT volumes).
        n_studies: studies (= patients) to write.
        seed: consortium seed; same seed and index give byte-identical files.
        intensity_shift: drift added to normalised intensities (0.1 = +10 % of range),
            not reflected in the window headers.
        manufacturer, model: override the site's Manufacturer / ManufacturerModelName.
        overwrite: replace an existing non-empty ``site_dir``.
        reports: (classification) also write a report per study, consistent with its image
            (:mod:`~ai4hi_sdk.data.report_synth`): two of every three studies as ``reports.csv``
            rows, every third as a DICOM SR object in the study (Basic Text SR by pydicom,
            Enhanced and Comprehensive SR by highdicom, in turn), and the ground truth in
            ``synthetic_report_truth.json``. The images and ``labels.csv`` are the same as without.
        labelled_fraction: share of studies (classification) written to ``labels.csv``; the
            others are unlabelled. Which ones is a pure function of ``seed`` and the site.
        finding: 'opacity' (bright, separable by mean brightness) or 'subtle' (see
            :func:`add_subtle_finding`).

    Raises:
        UserError: bad arguments, or ``site_dir`` exists, is not empty and not ``overwrite``.
    """
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if reports and task != "classification":
        raise UserError("reports are written for the classification task only (chest radiographs)")
    if reports and finding != "opacity":
        raise UserError("reports describe the opacity finding; use them with --finding opacity")
    _check_classification_options(task, labelled_fraction, finding)
    if site_index < 0:
        raise UserError(f"site index must be >= 0, got {site_index}")
    if n_studies < 1:
        raise UserError(f"studies per site must be >= 1, got {n_studies}")
    site_dir = Path(site_dir)
    if site_dir.exists() and any(site_dir.iterdir()):
        if not overwrite:
            raise UserError(f"{site_dir} already exists and is not empty (use --overwrite)")
        shutil.rmtree(site_dir)
    site_dir.mkdir(parents=True, exist_ok=True)

    vendor, xr_model, ct_model, kvp = _VENDORS[site_index % len(_VENDORS)]
    manufacturer = manufacturer or vendor
    name = site_dir.name
    rng = np.random.default_rng([seed, site_index])
    if task == "classification":
        modality = "DX" if site_index % 2 == 1 else "CR"  # hospital-2, -4, ... use DX
        model = model or xr_model
        files, positives, mean, labelled = _synth_radiographs(
            site_dir, rng, seed=seed, site_index=site_index, n_studies=n_studies,
            modality=modality, manufacturer=manufacturer, model=model, kvp=kvp,
            intensity_shift=intensity_shift, reports=reports, labelled_fraction=labelled_fraction,
            finding=finding,
        )
        series = n_studies
    else:
        modality, positives, labelled = "CT", None, None
        model = model or ct_model
        files, mean = _synth_ct(
            site_dir, rng, seed=seed, site_index=site_index, n_studies=n_studies,
            manufacturer=manufacturer, model=model, intensity_shift=intensity_shift,
        )
        series = n_studies
    return SiteSummary(
        name=name, path=str(site_dir), task=task, studies=n_studies, series=series,
        files=files, positives=positives, manufacturer=manufacturer, model=model,
        modality=modality, intensity_shift=intensity_shift, mean_intensity=mean,
        labelled=labelled,
    )


def _check_classification_options(task: str, labelled_fraction: float, finding: str) -> None:
    if finding not in FINDINGS:
        raise UserError(f"unknown finding {finding!r}: choose one of {', '.join(FINDINGS)}")
    if not 0.0 <= float(labelled_fraction) <= 1.0:
        raise UserError(f"labelled fraction must be in [0, 1], got {labelled_fraction}")
    if task != "classification" and (finding != "opacity" or labelled_fraction != 1.0):
        raise UserError("--finding and --labelled-fraction apply to the classification task only")


def _labelled_studies(seed: int, site_index: int, n_studies: int, fraction: float) -> set[int]:
    """Indices of the studies that get a label row: a seeded choice of round(fraction * n)."""
    if fraction >= 1.0:
        return set(range(n_studies))
    order = np.random.default_rng([seed, site_index, 7919]).permutation(n_studies)
    return set(order[: round(fraction * n_studies)].tolist())


def _synth_radiographs(
    site_dir: Path, rng: np.random.Generator, *, seed: int, site_index: int, n_studies: int,
    modality: str, manufacturer: str, model: str, kvp: float, intensity_shift: float, reports: bool = False,
    labelled_fraction: float = 1.0, finding: Finding = "opacity",
) -> tuple[int, int, float, int]:
    gain, offset, _, _ = _CALIBRATION[site_index % len(_CALIBRATION)]
    # Window from the site's nominal (pre-drift) calibration, 20 % wider than its range.
    centre = MAX_STORED * (offset + gain * 0.5)
    width = MAX_STORED * gain * 1.2
    labels = np.zeros(n_studies, dtype=int)
    labels[: (n_studies + 1) // 2] = 1
    labels = rng.permutation(labels)
    labelled = _labelled_studies(seed, site_index, n_studies, labelled_fraction)
    rows: list[tuple[str, int]] = []
    studies: list[tuple[int, Dataset, FindingPlacement | None]] = []
    total = 0.0
    for i in range(n_studies):
        sub = np.random.default_rng([seed, site_index, i])  # per-study stream: stable images
        sex, age = _patient(sub)
        study_uid = _uid(seed, site_index, i, "study")
        series_uid = _uid(seed, site_index, i, "series")
        sop_uid = _uid(seed, site_index, i, "image")
        image, placement = chest_radiograph_with_placement(sub, positive=bool(labels[i]), finding=finding)
        pixels = calibrate(image, site_index, sub, intensity_shift=intensity_shift)
        ds = _base_dataset(
            sop_class=DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE,
            sop_uid=sop_uid, study_uid=study_uid, series_uid=series_uid,
            patient_id=f"H{site_index + 1}-{i + 1:05d}", sex=sex, age=age,
            study_date=date(2024, 1, 1) + timedelta(days=int(sub.integers(365))),
            modality=modality, manufacturer=manufacturer, model=model,
            institution=f"Hospital {site_index + 1}",
        )
        ds.StudyDescription = "CHEST PA"
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        if modality == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"
        ds.KVP = kvp
        ds.InstanceNumber = 1
        ds.PixelSpacing = ds.ImagerPixelSpacing = [RADIOGRAPH_SPACING_MM] * 2
        ds.PixelIntensityRelationship = "LOG"
        ds.WindowCenter = round(centre, 1)
        ds.WindowWidth = round(width, 1)
        _write(ds, site_dir / "dicom" / f"study-{i + 1:04d}" / "image-0001.dcm", pixels)
        if i in labelled:
            rows.append((study_uid, int(labels[i])))
        studies.append((i, ds, placement))
        total += float(pixels.mean())
    _write_csv(site_dir / "labels.csv", ("StudyInstanceUID", "label"), rows)
    files = n_studies
    if reports:
        files += _synth_reports(site_dir, studies, seed=seed, site_index=site_index)
    return files, int(labels.sum()), total / n_studies, len(rows)


def _synth_reports(site_dir: Path, studies: list[tuple[int, Dataset, FindingPlacement | None]], *, seed: int,
                   site_index: int) -> int:
    """Write each study's report (see :func:`synth_site`); returns the SR files written."""
    import json
    from datetime import datetime

    from ai4hi_sdk.data.report_synth import synthetic_report, write_basic_text_sr, write_highdicom_sr

    single_column = site_index % 2 == 1  # hospital-2, -4, ...: a RIS export with one text column
    csv_rows: list[tuple[str, ...]] = []
    truth: dict[str, dict] = {}
    sr_files = 0
    for i, image, placement in studies:
        # its own stream: the images do not depend on whether reports are written
        report = synthetic_report(np.random.default_rng([seed, site_index, i, 0x5E9027]), placement)
        study_uid = str(image.StudyInstanceUID)
        channel = "csv" if i % 3 != 2 else ("basic", "enhanced", "comprehensive")[(i // 3) % 3]
        if channel == "csv":
            if single_column:
                csv_rows.append((study_uid, f"FINDINGS: {report.findings}\nIMPRESSION: {report.impression}"))
            else:
                csv_rows.append((study_uid, report.findings, report.impression))
        else:
            path = site_dir / "dicom" / f"study-{i + 1:04d}" / "report-0001.dcm"
            sop_uid, series_uid = _uid(seed, site_index, i, "sr"), _uid(seed, site_index, i, "sr-series")
            when = datetime.strptime(str(image.StudyDate) + "170000", "%Y%m%d%H%M%S")  # reported that afternoon
            if channel == "basic":
                write_basic_text_sr(path, image, sop_uid=sop_uid, series_uid=series_uid, findings=report.findings,
                                    impression=report.impression, when=when)
            else:
                write_highdicom_sr(path, image, kind=cast(SrKind, channel), sop_uid=sop_uid, series_uid=series_uid,
                                   findings=report.findings, impression=report.impression, when=when)
            sr_files += 1
        truth[study_uid] = {"channel": channel, "opacity_case": report.opacity_case, "truth": report.truth,
                            "placement": None if placement is None else {
                                "side": placement.side, "zone": placement.zone,
                                "diameter_mm": placement.diameter_mm}}
    header = ("StudyInstanceUID", "report_text") if single_column else ("StudyInstanceUID", "findings", "impression")
    with open(site_dir / "reports.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(csv_rows)
    (site_dir / SYNTHETIC_REPORT_TRUTH).write_text(json.dumps(truth, indent=1, sort_keys=True))
    return sr_files


def _synth_ct(
    site_dir: Path, rng: np.random.Generator, *, seed: int, site_index: int, n_studies: int,
    manufacturer: str, model: str, intensity_shift: float,
) -> tuple[int, float]:
    geometry = CT_GEOMETRIES[site_index % len(CT_GEOMETRIES)]
    npz = site_index % 2 == 1  # hospital-2, -4, ...: masks with their own affine, in InstanceNumber order
    depth, nrows, ncols = CT_SHAPE
    rows: list[tuple[str, str]] = []
    files, total = 0, 0.0
    (site_dir / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n_studies):
        sub = np.random.default_rng([seed, site_index, i])
        sex, age = _patient(sub)
        study_uid = _uid(seed, site_index, i, "study")
        series_uid = _uid(seed, site_index, i, "series")
        frame_uid = _uid(seed, site_index, i, "frame")
        hu, mask = ct_volume(sub)  # both in the volume convention: index k = k-th slice along the normal
        stored = calibrate_ct(hu, site_index, sub, intensity_shift=intensity_shift)
        study_date = date(2024, 1, 1) + timedelta(days=int(sub.integers(365)))
        # One header per series; only the per-slice elements change in the loop.
        ds = _base_dataset(
            sop_class=CT_IMAGE_STORAGE, sop_uid=UID(""), study_uid=study_uid,
            series_uid=series_uid, patient_id=f"H{site_index + 1}-{i + 1:05d}", sex=sex,
            age=age, study_date=study_date, modality="CT", manufacturer=manufacturer,
            model=model, institution=f"Hospital {site_index + 1}",
        )
        ds.StudyDescription = "CT ABDOMEN"
        ds.BodyPartExamined = "ABDOMEN"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = frame_uid
        ds.KVP = 120.0
        ds.SliceThickness = geometry.step
        ds.PixelSpacing = list(geometry.pixel_spacing)
        ds.ImageOrientationPatient = list(geometry.orientation)
        ds.RescaleIntercept = CT_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        numbers = [k + 1 if geometry.numbering_along else depth - k for k in range(depth)]
        for k in range(depth):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(
                seed, site_index, i, "slice", k
            )
            ds.InstanceNumber = numbers[k]
            ds.ImagePositionPatient = geometry.position(k)
            ds.SliceLocation = ds.ImagePositionPatient[2]
            _write(ds, site_dir / "dicom" / f"study-{i + 1:04d}" / f"slice-{numbers[k]:03d}.dcm", stored[k])
            files += 1
        if npz:
            by_number = np.argsort(numbers)  # array index -> slice in InstanceNumber order
            affine = geometry.affine(depth)
            if not geometry.numbering_along:  # slice 0 of this array is the convention's last slice
                affine[:3, 3] = geometry.position(depth - 1)
                affine[:3, 0] = -affine[:3, 0]
            mask_rel = f"masks/{series_uid}.npz"
            np.savez(site_dir / mask_rel, mask=mask[by_number], affine=affine,
                     frame_of_reference_uid=np.array(frame_uid))
        else:
            mask_rel = f"masks/{series_uid}.npy"
            np.save(site_dir / mask_rel, mask)
        rows.append((series_uid, mask_rel))
        total += float(stored.mean())
    _write_csv(site_dir / "labels.csv", ("SeriesInstanceUID", "mask"), rows)
    return files, total / n_studies


def _write_csv(path: Path, header: tuple[str, str], rows: Sequence[tuple[object, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def synth_consortium(
    out_dir: Path,
    *,
    sites: int = 3,
    task: Task = "classification",
    studies_per_site: int = 40,
    seed: int = 0,
    drift: dict[str, float] | None = None,
    manufacturers: dict[str, str] | None = None,
    overwrite: bool = False,
    reports: bool = False,
    labelled_fraction: float = 1.0,
    finding: Finding = "opacity",
) -> list[SiteSummary]:
    """Write ``sites`` sites ``hospital-1..N`` under ``out_dir``.

    Args:
        drift: site name -> ``intensity_shift`` for that site (others get 0).
        manufacturers: site name -> Manufacturer override.
        reports: also write reports per study (see :func:`synth_site`).
        labelled_fraction, finding: see :func:`synth_site` (the same at every site).

    Raises:
        UserError: bad counts, drift/manufacturer for a site that is not generated, or
            existing site folders without ``overwrite``.
    """
    if sites < 1:
        raise UserError(f"--sites must be >= 1, got {sites}")
    _check_classification_options(task, labelled_fraction, finding)
    names = [site_name(k) for k in range(sites)]
    for option, mapping in (("drift", drift), ("manufacturer", manufacturers)):
        unknown = sorted(set(mapping or {}) - set(names))
        if unknown:
            raise UserError(
                f"{option} site {', '.join(unknown)} is not one of the generated sites "
                f"({names[0]} .. {names[-1]})"
            )
    out_dir = Path(out_dir)
    if not overwrite:  # check all sites before writing any, so a refusal leaves no debris
        busy = [n for n in names if (out_dir / n).exists() and any((out_dir / n).iterdir())]
        if busy:
            raise UserError(
                f"{out_dir} already holds {', '.join(busy)}; use --overwrite to replace them"
            )
    return [
        synth_site(
            out_dir / name, site_index=k, task=task, n_studies=studies_per_site, seed=seed,
            intensity_shift=(drift or {}).get(name, 0.0),
            manufacturer=(manufacturers or {}).get(name), overwrite=overwrite, reports=reports,
            labelled_fraction=labelled_fraction, finding=finding,
        )
        for k, name in enumerate(names)
    ]

"""Normalise the subgroup attributes a DICOM header carries: sex, age, scanner vendor.

Hospital exports spell these fields in many ways ('F', 'female', '043Y', '43 Y',
'GE MEDICAL SYSTEMS', 'G.E. Medical Systems', 'TOSHIBA_MEC'). Subgroup audits need one
spelling per group, so every function here is pure, total (never raises) and maps
anything it does not recognise to an explicit bucket rather than dropping it.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

Sex = Literal["F", "M", "O", "unknown"]

UNKNOWN: Final = "unknown"

_SEX_ALIASES: dict[str, Sex] = {
    "f": "F",
    "female": "F",
    "w": "F",  # German exports: weiblich
    "m": "M",
    "male": "M",
    "o": "O",
    "other": "O",
}

# DICOM AS: nnnD / nnnW / nnnM / nnnY. Units in days, so months and weeks are exact-ish.
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMY]?)\s*$", re.IGNORECASE)
_MAX_PLAUSIBLE_AGE = 130.0

AGE_BANDS: tuple[tuple[float, float, str], ...] = (
    (0.0, 18.0, "0-17"),
    (18.0, 40.0, "18-39"),
    (40.0, 60.0, "40-59"),
    (60.0, 80.0, "60-79"),
    (80.0, float("inf"), "80+"),
)

# Canonical vendor -> patterns matched against the normalised token string
# (lower case, punctuation folded to single spaces, padded with spaces for whole-word tests).
_VENDORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GE", (" ge ", " g e ", " gems ", " general electric ")),
    ("Siemens", (" siemens ",)),
    ("Philips", (" philips ",)),
    ("Canon/Toshiba", (" canon ", " toshiba ")),
    ("Agfa", (" agfa ",)),
    ("Fujifilm", (" fuji ", " fujifilm ")),
    ("Carestream", (" carestream ", " kodak ")),
    ("Hologic", (" hologic ",)),
    ("Samsung", (" samsung ",)),
    ("Konica Minolta", (" konica ",)),
    ("United Imaging", (" united imaging ", " uih ")),
    ("Hitachi", (" hitachi ",)),
)

# Values exports use for "not recorded"; they must not become a vendor called 'Unknown'.
_PLACEHOLDERS = {"", "unknown", "n/a", "na", "none", "-", "?"}

# Corporate suffixes carry no information about the device, drop them before title-casing.
_CORPORATE_SUFFIX_RE = re.compile(
    r"[\s,]+(inc|ltd|llc|gmbh|ag|corp|corporation|co|company|s\.?a|b\.?v|e\.?v)\.?$",
    re.IGNORECASE,
)


def _text(value: Any) -> str:
    """Header value -> stripped str ('' for None / empty multi-values)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):  # pydicom MultiValue: take the first
        value = value[0] if len(value) else ""
    return str(value).strip()


def normalise_sex(value: Any) -> Sex:
    """Map a PatientSex (0010,0040) value to 'F', 'M', 'O' or 'unknown'."""
    return _SEX_ALIASES.get(_text(value).lower(), UNKNOWN)


def parse_age_years(value: Any) -> float | None:
    """Parse a PatientAge (0010,1010) value into years.

    Accepts DICOM AS strings ('043Y', '006M', '010W', '003D') and the sloppy forms
    seen in real exports ('99', '43 Y', '43y', numbers). A bare number means years.
    Returns None for empty, unparseable, negative or implausible (> 130 y) values.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        years = float(value)
    else:
        match = _AGE_RE.match(_text(value))
        if match is None:
            return None
        number, unit = match.groups()
        years = float(number) * _AGE_UNIT_YEARS[(unit or "Y").upper()]
    if not 0.0 <= years <= _MAX_PLAUSIBLE_AGE:
        return None
    return years


def age_band(years: float | None) -> str:
    """Bucket an age in years into '0-17', '18-39', '40-59', '60-79', '80+' or 'unknown'."""
    if years is None or years != years or years < 0:  # None, NaN, negative
        return UNKNOWN
    for low, high, name in AGE_BANDS:
        if low <= years < high:
            return name
    return UNKNOWN


def normalise_manufacturer(value: Any) -> str:
    """Map a Manufacturer (0008,0070) value to a canonical vendor name.

    Case, whitespace and punctuation are ignored: 'GE MEDICAL SYSTEMS',
    'G.E. Medical Systems' and 'GE Healthcare' all give 'GE'; 'TOSHIBA_MEC' and
    'Canon Medical Systems' give 'Canon/Toshiba'. Unknown vendors keep their own name,
    whitespace-collapsed, without corporate suffix ('Inc.', 'GmbH', ...) and title-cased
    ('SonoSite, Inc.' -> 'Sonosite'); empty or placeholder values ('unknown', 'N/A') give
    'unknown'. Canonical names map to themselves.
    """
    raw = _text(value)
    if raw.lower() in _PLACEHOLDERS:
        return UNKNOWN
    # 'G.E.' -> 'ge': drop dots between single letters first, then fold punctuation.
    folded = re.sub(r"\b([a-z])\.(?=[a-z]\b)", r"\1", raw.lower())
    tokens = " " + " ".join(re.findall(r"[a-z0-9]+", folded)) + " "
    for canonical, patterns in _VENDORS:
        if any(pattern in tokens for pattern in patterns):
            return canonical
    name = " ".join(raw.split())
    while True:  # 'Foo Co., Ltd.' has two suffixes
        stripped = _CORPORATE_SUFFIX_RE.sub("", name).strip(" ,")
        if stripped == name or not stripped:
            break
        name = stripped
    return name.title() if name else UNKNOWN

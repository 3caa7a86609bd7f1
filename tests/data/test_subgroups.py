from __future__ import annotations

import math
import warnings

import pydicom
import pytest

from ai4hi_sdk.data.subgroups import (
    age_band,
    normalise_manufacturer,
    normalise_sex,
    parse_age_years,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("F", "F"), ("f", "F"), (" female ", "F"), ("FEMALE", "F"),
        ("M", "M"), ("male", "M"), ("O", "O"), ("other", "O"),
        ("", "unknown"), (None, "unknown"), ("X", "unknown"), ("U", "unknown"),
    ],
)
def test_normalise_sex(value, expected):
    assert normalise_sex(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("043Y", 43.0), ("000Y", 0.0), ("006M", 0.5), ("018M", 1.5),
        ("010W", 10 * 7 / 365.25), ("003D", 3 / 365.25),
        ("99", 99.0), ("43 Y", 43.0), ("43y", 43.0), (" 7 ", 7.0), (61, 61.0), (61.5, 61.5),
        ("", None), (None, None), ("abc", None), ("Y", None), ("-5Y", None), ("200Y", None),
        ("43 years", None),
    ],
)
def test_parse_age_years(value, expected):
    got = parse_age_years(value)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("years", "band"),
    [
        (0.0, "0-17"), (17.99, "0-17"), (18.0, "18-39"), (39.9, "18-39"), (40.0, "40-59"),
        (59.99, "40-59"), (60.0, "60-79"), (79.5, "60-79"), (80.0, "80+"), (120.0, "80+"),
        (None, "unknown"), (math.nan, "unknown"), (-1.0, "unknown"),
    ],
)
def test_age_band(years, band):
    assert age_band(years) == band


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("GE MEDICAL SYSTEMS", "GE"), ("GE Medical Systems", "GE"), ("GE Healthcare", "GE"),
        ("G.E. Medical Systems", "GE"), ("  ge  medical   systems ", "GE"), ("GEMS", "GE"),
        ("Siemens", "Siemens"), ("SIEMENS", "Siemens"), ("Siemens Healthineers", "Siemens"),
        ("Philips", "Philips"), ("Philips Medical Systems", "Philips"),
        ("Philips Medical Systems, Inc.", "Philips"),
        ("Canon", "Canon/Toshiba"), ("TOSHIBA", "Canon/Toshiba"), ("TOSHIBA_MEC", "Canon/Toshiba"),
        ("Canon Medical Systems", "Canon/Toshiba"), ("Agfa-Gevaert AG", "Agfa"),
        # unknown vendors keep their name: collapsed, suffix-free, title-cased
        ("SonoSite, Inc.", "Sonosite"), ("ACME  imaging", "Acme Imaging"),
        ("Foo Co., Ltd.", "Foo"), ("Gendex", "Gendex"),  # 'ge' must match whole words only
        ("", "unknown"), ("   ", "unknown"), (None, "unknown"), ("UNKNOWN", "unknown"),
        ("N/A", "unknown"), ("Canon/Toshiba", "Canon/Toshiba"),
    ],
)
def test_normalise_manufacturer(raw, canonical):
    assert normalise_manufacturer(raw) == canonical


def _header_values(files, keyword):
    values = set()
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            values.add(str(ds.get(keyword, "")))
        except Exception:  # noqa: BLE001 - broken files are the point of the test corpus
            continue
    return values


def test_pydicom_manufacturers_normalise_sensibly(pydicom_files):
    raws = _header_values(pydicom_files, "Manufacturer")
    # The corpus holds several spellings of the big vendors: check it still does.
    assert {"GE MEDICAL SYSTEMS", "G.E. Medical Systems", "TOSHIBA_MEC", "SIEMENS"} <= raws
    for raw in raws:
        out = normalise_manufacturer(raw)
        assert out and out == out.strip() and "  " not in out
        assert normalise_manufacturer(out) == out, "canonical names must be fixed points"
        if not raw.strip():
            assert out == "unknown"
    ge_like = [r for r in raws if r.upper().replace(".", "").startswith("GE ")]
    assert ge_like and all(normalise_manufacturer(r) == "GE" for r in ge_like)
    philips = [r for r in raws if "philips" in r.lower()]
    assert philips and all(normalise_manufacturer(r) == "Philips" for r in philips)


def test_pydicom_ages_and_sexes_parse(pydicom_files):
    ages = {a for a in _header_values(pydicom_files, "PatientAge") if a.strip()}
    assert ages, "expected some PatientAge values in pydicom's test files"
    for age in ages:
        years = parse_age_years(age)
        assert years is not None and 0 <= years <= 130, age
        assert age_band(years) != "unknown"
    for sex in _header_values(pydicom_files, "PatientSex"):
        assert normalise_sex(sex) in {"F", "M", "O", "unknown"}

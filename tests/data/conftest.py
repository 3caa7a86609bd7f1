"""Shared fixtures: a mirror of pydicom's test files and a small synthetic consortium."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from ai4hi_sdk.data.synth import synth_consortium

PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


@pytest.fixture(scope="session")
def pydicom_files() -> list[Path]:
    """Every regular file pydicom's wheel ships as test data (get_testdata_files also lists
    folders, and the larger files of the pydicom-data package, used by name where needed)."""
    return sorted(Path(f) for f in get_testdata_files()
                  if Path(f).is_file() and Path(f).is_relative_to(PYDICOM_TEST_FILES))


@pytest.fixture(scope="session")
def pydicom_tree(tmp_path_factory, pydicom_files) -> Path:
    """Symlinks to all pydicom test files, in their original folder layout."""
    root = tmp_path_factory.mktemp("pydicom_tree")
    for src in pydicom_files:
        dst = root / src.relative_to(PYDICOM_TEST_FILES)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, dst)
    return root


@pytest.fixture(scope="session")
def consortium(tmp_path_factory) -> Path:
    """3 classification sites x 24 studies, seed 1 (read-only: copy before modifying)."""
    root = tmp_path_factory.mktemp("consortium")
    synth_consortium(root, sites=3, studies_per_site=24, seed=1)
    return root


@pytest.fixture(scope="session")
def ct_site(tmp_path_factory) -> Path:
    """One segmentation site with 3 CT series of 24 slices (read-only)."""
    from ai4hi_sdk.data.synth import synth_site

    site = tmp_path_factory.mktemp("ct") / "hospital-1"
    synth_site(site, site_index=0, task="segmentation", n_studies=3, seed=5)
    return site

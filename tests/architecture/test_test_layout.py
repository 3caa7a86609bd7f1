"""The test tree keeps its shape: end-to-end tests (real NVFlare simulator or deployment) live in
``tests/e2e/`` and only there, so ``make test-fast`` (``-m "not e2e and not deploy"``) is the unit
suite and ``tests/e2e/`` is the slow one; the unit tests mirror the package's sub-packages."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.parent / "ai4hi_sdk"
E2E = TESTS / "e2e"
SLOW_MARK = re.compile(r"pytest\.mark\.(e2e|deploy)\b")


def _test_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("test_*.py") if "__pycache__" not in p.parts)


def test_slow_tests_live_only_in_the_e2e_folder():
    outside = [str(p.relative_to(TESTS)) for p in _test_files(TESTS)
               if E2E not in p.parents and SLOW_MARK.search(p.read_text())]
    assert outside == [], f"e2e/deploy-marked tests outside tests/e2e/: {outside}"


def test_every_e2e_file_is_marked_and_named():
    files = _test_files(E2E)
    assert files, "tests/e2e/ holds no tests"
    unmarked = [str(p.relative_to(TESTS)) for p in files if not SLOW_MARK.search(p.read_text())]
    misnamed = [str(p.relative_to(TESTS)) for p in files if not p.stem.endswith("_e2e")]
    assert unmarked == [] and misnamed == [], (unmarked, misnamed)


def test_unit_tests_mirror_the_sub_packages():
    packages = sorted(p.parent.relative_to(PACKAGE) for p in PACKAGE.rglob("__init__.py")
                      if p.parent != PACKAGE and "__pycache__" not in p.parts)
    # a sub-package is mirrored by its own test folder or, for small ones, by tests of its parent's folder
    missing = [str(p) for p in packages
               if not (TESTS / p).is_dir() and not any((TESTS / q).is_dir() and _test_files(TESTS / q)
                                                        for q in [p.parent] if str(q) != ".")]
    assert missing == [], f"sub-packages with no test folder: {missing}"

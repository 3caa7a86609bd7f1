"""Drift monitoring on real (synthetic) DICOM: an injected detector/scanner shift alarms, new
patients from the same scanner do not; the false-alarm rate is measured over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.validation.monitoring import (
    DriftFeatures,
    compare_features,
    drift_report,
    header_and_intensity_features,
)

N = 40


def _features(root, name, seed, **drift):
    site = synth_site(root / name, site_index=0, n_studies=N, seed=seed, **drift)
    return header_and_intensity_features(sorted((root / name / "dicom").rglob("*.dcm"))), site


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    ref, _ = _features(root, "ref", 0)
    same, _ = _features(root, "same", 1)  # new patients, same scanner
    shifted, _ = _features(root, "shift", 1, intensity_shift=0.15)
    vendor, _ = _features(root, "vendor", 1, manufacturer="AGFA")
    return ref, same, shifted, vendor


def test_detects_injected_intensity_shift(sites):
    ref, _, shifted, _ = sites
    alarm = compare_features(ref, shifted, n_permutations=100)
    assert alarm.fired and "intensity_mean" in alarm.triggered


def test_detects_scanner_change(sites):
    ref, _, _, vendor = sites
    alarm = compare_features(ref, vendor, n_permutations=100)
    assert alarm.fired and "manufacturer" in alarm.triggered


def test_unshifted_site_does_not_alarm(sites):
    ref, same, _, _ = sites
    alarm = compare_features(ref, same, n_permutations=100)
    assert not alarm.fired, alarm.summary()


def test_false_alarm_rate_and_power_over_seeds(sites):
    """Resample (bootstrap) the real features of unshifted and shifted sites: rate of alarms."""
    ref, same, shifted, _ = sites
    pool_null = _concat(ref, same)

    def resample(f: DriftFeatures, rng) -> DriftFeatures:
        idx = rng.integers(0, f.n, f.n)
        return DriftFeatures({k: [v[i] for i in idx] for k, v in f.categorical.items()},
                             {k: np.asarray(v)[idx] for k, v in f.numeric.items()})

    def split(f, rng):
        perm = rng.permutation(f.n)
        a, b = perm[: f.n // 2], perm[f.n // 2:]
        pick = lambda idx: DriftFeatures({k: [v[i] for i in idx] for k, v in f.categorical.items()},  # noqa: E731
                                         {k: np.asarray(v)[idx] for k, v in f.numeric.items()})
        return pick(a), pick(b)

    rng = np.random.default_rng(0)
    seeds = 100
    false = np.mean([compare_features(*split(pool_null, rng)).fired for _ in range(seeds)])
    power = np.mean([compare_features(resample(ref, rng), resample(shifted, rng)).fired for _ in range(seeds)])
    print(f"drift on DICOM features: false-alarm rate {false:.2f}, power {power:.2f} over {seeds} resamples")
    assert false <= 0.10
    assert power >= 0.9


def _concat(a: DriftFeatures, b: DriftFeatures) -> DriftFeatures:
    return DriftFeatures({k: list(a.categorical[k]) + list(b.categorical[k]) for k in a.categorical},
                         {k: np.concatenate([a.numeric[k], b.numeric[k]]) for k in a.numeric})


def test_report_has_only_statistics(sites, tmp_path):
    ref, _, shifted, _ = sites
    ref.embedding = np.random.default_rng(0).normal(size=(ref.n, 3))
    shifted.embedding = np.random.default_rng(1).normal(size=(shifted.n, 3))
    rep = drift_report(compare_features(ref, shifted, n_permutations=50), ref.n, shifted.n)
    assert rep["alarm"] and rep["n_reference"] == N
    for test in rep["tests"].values():
        assert set(test) <= {"statistic", "p_value", "dof", "bandwidth", "n_permutations"}
    # the reference round-trips through its local file
    back = DriftFeatures.load(ref.save(tmp_path / "ref.npz"))
    assert back.categorical == ref.categorical and np.allclose(back.numeric["intensity_mean"], ref.numeric["intensity_mean"])
    assert back.embedding.shape == (N, 3)

import numpy as np

from ai4hi_sdk.validation.drift import DriftAlarm, categorical_drift, mmd_permutation_test, numeric_drift

ALPHA = 0.05


def _site(rng, n=120, shift=0.0):
    """Synthetic per-image features: intensity mean, intensity std, 4-d embedding, manufacturer counts."""
    intensity = rng.normal(100 + shift, 10, n)
    spread = rng.normal(20, 2, n)
    emb = rng.normal(size=(n, 4))
    emb[:, 0] += shift / 10.0
    manu = rng.choice(["GE", "Siemens", "Philips"], n, p=[0.5, 0.3, 0.2])
    counts = {k: int((manu == k).sum()) for k in ["GE", "Siemens", "Philips"]}
    return intensity, spread, emb, counts


def _alarm(seed, shift):
    rng = np.random.default_rng(seed)
    ref, cur = _site(rng), _site(rng, shift=shift)
    alarm = DriftAlarm(alpha=ALPHA)
    alarm.add("intensity_mean", numeric_drift(ref[0], cur[0]))
    alarm.add("intensity_std", numeric_drift(ref[1], cur[1]))
    alarm.add("manufacturer", categorical_drift(ref[3], cur[3]))
    alarm.add("embedding_mmd", mmd_permutation_test(ref[2], cur[2], n_permutations=200, seed=seed))
    return alarm


def test_false_alarm_rate_and_power_over_seeds():
    seeds = range(50)
    false_alarms = np.mean([_alarm(s, 0.0).fired for s in seeds])
    power = np.mean([_alarm(s, 8.0).fired for s in seeds])  # +0.8 SD intensity shift
    print(f"false-alarm rate {false_alarms:.3f}, detection power {power:.3f}")
    assert false_alarms <= ALPHA + 0.05
    assert power >= 0.9


def test_outputs_only_statistics():
    a = _alarm(0, 8.0)
    s = a.summary()
    assert s["alarm"] and "intensity_mean" in s["triggered"]
    for r in s["tests"].values():
        assert set(r) <= {"test", "statistic", "p_value", "dof", "bandwidth", "n_permutations"}
    assert a.corrected_alpha == ALPHA / 4


def test_mmd_null_p_values_roughly_uniform_and_detects_shift():
    rng = np.random.default_rng(0)
    ps = [mmd_permutation_test(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)), n_permutations=100, seed=i)["p_value"]
          for i in range(40)]
    assert 0.3 < np.mean(ps) < 0.7
    shifted = mmd_permutation_test(rng.normal(size=(60, 3)), rng.normal(0.8, 1, size=(60, 3)), seed=1)
    assert shifted["p_value"] < 0.01


def test_categorical_drift():
    assert categorical_drift({"a": 50, "b": 50}, {"a": 50, "b": 50})["p_value"] > 0.9
    assert categorical_drift({"a": 90, "b": 10}, {"a": 10, "b": 90, "c": 5})["p_value"] < 1e-6

"""One secure-aggregation configuration: the job spec's section becomes the protocol's
:class:`SecAggConfig` in one place, and the payload codec and the up-front overflow check use the
same scale (the old check used a fixed 2**16 the codec never used)."""
from __future__ import annotations

import numpy as np
import pytest

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.site_policy import SitePrivacyPolicy
from ai4hi_sdk.jobs.wire import ACCOUNTING_METRICS
from ai4hi_sdk.privacy.secagg.primitives.quantize import QuantizationConfig
from ai4hi_sdk.privacy.secagg.protocol import SecAggConfig, SitePolicy
from ai4hi_sdk.privacy.secagg.settings import codec_for, masked_metric_names, protocol_config, site_policy_for

STATE = {"b": np.zeros((2,), np.float32), "w": np.zeros((3, 4), np.float32)}
DECLARED = frozenset({"train_loss", "val_auroc", *ACCOUNTING_METRICS})


def _settings(**secure):
    return JobSpec(name="x", min_sites=2, privacy={"secure_aggregation": secure}).privacy.secure_aggregation


def test_every_setting_of_the_job_reaches_the_protocol_configuration():
    settings = _settings(neighbours=4, threshold=3, clip=2.5, max_samples_per_site=77, secure_metrics=False,
                         cipher="chacha20", key_timeout_s=9)
    assert protocol_config(settings) == SecAggConfig(neighbours=4, threshold=3, clip=2.5, max_samples_per_site=77,
                                                     secure_metrics=False, cipher="chacha20", key_timeout_s=9)
    # the spec's defaults are the configuration's defaults
    assert protocol_config(_settings()) == SecAggConfig()


def test_the_codec_is_built_from_the_configuration():
    config = protocol_config(_settings(clip=2.5, max_samples_per_site=77))
    codec = codec_for(config, STATE, DECLARED, 5)
    assert (codec.clip, codec.max_weight, codec.n_sites) == (2.5, 77, 5)
    assert codec.tensors == (("b", (2,)), ("w", (3, 4)))
    assert codec.metric_names == ("train_loss", "val_auroc")  # accounting metrics travel in the clear
    quiet = codec_for(protocol_config(_settings(secure_metrics=False)), STATE, DECLARED, 5)
    assert quiet.metric_names == () == masked_metric_names(DECLARED, False)


@pytest.mark.parametrize("clip,n_sites", [(1.0, 3), (1.0, 1000), (8.0, 7), (1e6, 100), (1e-3, 50)])
def test_the_check_and_the_codec_use_one_scale(clip, n_sites):
    config = SecAggConfig(clip=clip)
    config.validate_for(n_sites)
    codec = codec_for(config, STATE, DECLARED, n_sites)
    assert config.quantization(n_sites).scale == codec.delta_config.scale
    # independent reference: the largest power of two with n * (floor(clip * s) + 1) <= 2**31 - 1
    e = max(k for k in range(-100, 101) if n_sites * (np.floor(np.float32(clip) * 2.0**k) + 1) <= 2**31 - 1)
    assert codec.delta_config.scale == 2.0**e


def test_a_configuration_the_old_fixed_scale_refused_now_aggregates_within_its_bound():
    """clip 1e6 on 100 sites: the fixed 2**16 of the old check overflowed, the codec's own scale
    does not; the sum decodes to the weighted mean of the clipped deltas within the codec's bound."""
    n = 100
    config = SecAggConfig(clip=1e6, max_samples_per_site=10)
    config.validate_for(n)
    codec = codec_for(config, {"w": np.zeros(64, np.float32)}, frozenset(), n)
    rng = np.random.default_rng(0)
    deltas = [rng.uniform(-2e6, 2e6, 64).astype(np.float32) for _ in range(n)]
    weights = [int(w) for w in rng.integers(1, 11, n)]
    total = np.zeros(codec.length, np.uint32)
    for delta, weight in zip(deltas, weights):
        total += codec.encode({"w": delta}, weight, {})
    decoded = codec.decode(total, n)
    clipped = [np.clip(d.astype(np.float64), -1e6, 1e6) for d in deltas]
    reference = sum(w * d for w, d in zip(weights, clipped)) / sum(weights)
    assert decoded.total_weight == sum(weights)
    assert np.max(np.abs(decoded.mean_delta["w"] - reference)) <= codec.error_bound(n, sum(weights))


def test_a_payload_that_could_overflow_is_never_built():
    from ai4hi_sdk.privacy.secagg.primitives.quantize import OverflowRiskError

    with pytest.raises(OverflowRiskError, match="max count"):
        codec_for(SecAggConfig(max_samples_per_site=10_000_000), STATE, DECLARED, 430)
    assert isinstance(codec_for(SecAggConfig(), STATE, DECLARED, 3).delta_config, QuantizationConfig)


def test_the_site_policy_becomes_the_protocols_site_policy():
    policy = SitePrivacyPolicy(max_epsilon_per_dataset=10, min_secure_aggregation_sites=5, min_secure_aggregation_threshold=4,
                               secure_aggregation_threshold_rule="majority")
    assert site_policy_for(policy) == SitePolicy(min_sites=5, threshold_floor=4, threshold_rule="majority")
    assert site_policy_for(None) == SitePolicy()

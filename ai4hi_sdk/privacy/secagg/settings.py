"""The job's secure-aggregation settings and the site's policy, translated into the pure protocol's
types: the one translation, used by the server (:mod:`ai4hi_sdk.jobs.components.secagg_server`),
every site (:mod:`ai4hi_sdk.site.secagg_client`) and the up-front checks of the simulator and the
continuous loop::

    job spec privacy.secure_aggregation  --protocol_config-->  SecAggConfig  --codec_for-->  PayloadCodec
    site policy (min sites, t floor, rule) --site_policy_for-->  SitePolicy

:class:`~ai4hi_sdk.privacy.secagg.protocol.config.SecAggConfig` is the one configuration the protocol,
its up-front check (``validate_for``) and the payload layout read; the job spec's section is only
its YAML form (:class:`~ai4hi_sdk.config.job_spec.SecureAggregationSpec`, which imports nothing of
this package).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ai4hi_sdk.jobs.wire import ACCOUNTING_METRICS
from ai4hi_sdk.privacy.secagg.protocol import PayloadCodec, SecAggConfig, SitePolicy

if TYPE_CHECKING:
    from ai4hi_sdk.config.job_spec import SecureAggregationSpec
    from ai4hi_sdk.config.site_policy import SitePrivacyPolicy


def protocol_config(settings: "SecureAggregationSpec") -> SecAggConfig:
    """The protocol's configuration from the job spec's ``privacy.secure_aggregation`` section
    (raises ValueError for an unusable combination)."""
    return SecAggConfig(neighbours=settings.neighbours, threshold=settings.threshold, clip=settings.clip,
                        max_samples_per_site=settings.max_samples_per_site, secure_metrics=settings.secure_metrics,
                        cipher=settings.cipher, key_timeout_s=settings.key_timeout_s)


def site_policy_for(policy: "SitePrivacyPolicy | None") -> SitePolicy:
    """The protocol's :class:`SitePolicy` from the site's privacy policy
    (:class:`~ai4hi_sdk.config.site_policy.SitePrivacyPolicy`); the defaults without one."""
    if policy is None:
        return SitePolicy()
    return SitePolicy(min_sites=policy.min_secure_aggregation_sites,
                      threshold_floor=policy.min_secure_aggregation_threshold,
                      threshold_rule=policy.secure_aggregation_threshold_rule)


def masked_metric_names(declared_metrics: frozenset[str], secure_metrics: bool) -> tuple[str, ...]:
    """Metrics that travel inside the masked vector (consortium means only): every declared metric
    but the accounting ones, which travel in the clear; none when ``secure_metrics`` is off (then
    statistics of the local training do not leave at all)."""
    return tuple(sorted(set(declared_metrics) - set(ACCOUNTING_METRICS))) if secure_metrics else ()


def codec_for(config: SecAggConfig, initial_state: Mapping[str, Any], declared_metrics: frozenset[str],
              n_sites: int) -> PayloadCodec:
    """The job's payload layout: same at every site and at the server (built from the job's
    configuration and site count: the server's own site set, each site's pinned set; equal when the
    server is honest). Its quantisation is :meth:`SecAggConfig.quantization` for ``n_sites``."""
    tensors = tuple((name, tuple(initial_state[name].shape)) for name in sorted(initial_state))
    return PayloadCodec(tensors, n_sites=n_sites, clip=config.clip, max_weight=config.max_samples_per_site,
                        metric_names=masked_metric_names(declared_metrics, config.secure_metrics))

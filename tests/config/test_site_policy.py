"""Site privacy policy file."""

from pathlib import Path

import pytest

from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.config.site_policy import SITE_POLICY, SitePrivacyPolicy, load_site_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "site_templates" / "site_policy.example.yaml"


def test_example_file_loads():
    policy = load_site_policy(EXAMPLE)
    assert policy.max_epsilon_per_dataset == 8.0 and policy.delta == 1e-5 and policy.accountant == "rdp"
    assert policy.limit_for("cxr_2019_2023") == 4.0 and policy.limit_for("other") == 8.0
    assert (policy.min_secure_aggregation_sites, policy.min_secure_aggregation_threshold,
            policy.secure_aggregation_threshold_rule) == (3, 2, "two_thirds")
    assert SITE_POLICY == Path("ai4hi") / "site_policy.yaml"


def test_defaults():
    policy = SitePrivacyPolicy(max_epsilon_per_dataset=3)
    assert policy.delta == 1e-5 and policy.min_noise_multiplier == 0.5 and policy.accountant == "rdp"
    assert policy.require_dp and policy.require_secure_aggregation
    assert policy.allowed_job_kinds == ["train", "validate"] and policy.datasets == {}


@pytest.mark.parametrize(
    "text, field",
    [
        ("delta: 1.0e-5\n", "max_epsilon_per_dataset"),
        ("max_epsilon_per_dataset: 0\n", "max_epsilon_per_dataset"),
        ("max_epsilon_per_dataset: 4\ndelta: 0.01\n", "delta"),
        ("max_epsilon_per_dataset: 4\ndelta: 0\n", "delta"),
        ("max_epsilon_per_dataset: 4\nmin_noise_multiplier: -1\n", "min_noise_multiplier"),
        ("max_epsilon_per_dataset: 4\naccountant: gdp\n", "accountant"),
        ("max_epsilon_per_dataset: 4\nallowed_job_kinds: [train, exfiltrate]\n", "allowed_job_kinds.1"),
        ("max_epsilon_per_dataset: 4\ndatasets: {a: {max_epsilon: -2}}\n", "datasets.a.max_epsilon"),
        ("max_epsilon_per_dataset: 4\nmax_epsilon: 4\n", "max_epsilon"),
        ("max_epsilon_per_dataset: 4\ndatasets: {a: {budget: 2}}\n", "datasets.a.budget"),
        ("max_epsilon_per_dataset: 4\ndatasets: {a: {max_epsilon: .inf}}\n", "datasets.a.max_epsilon"),
        ("max_epsilon_per_dataset: 4\nmin_secure_aggregation_sites: 2\n", "min_secure_aggregation_sites"),
        ("max_epsilon_per_dataset: 4\nmin_secure_aggregation_threshold: 1\n", "min_secure_aggregation_threshold"),
        ("max_epsilon_per_dataset: 4\nsecure_aggregation_threshold_rule: any\n", "secure_aggregation_threshold_rule"),
    ],
)
def test_invalid_policies_name_file_and_field(tmp_path, text, field):
    path = tmp_path / "site_policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_site_policy(path)
    assert str(path) in str(info.value)
    assert field in [f for f, _ in info.value.problems]


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_site_policy(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_epsilon_per_dataset: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_site_policy(bad)


def test_job_refusal_reasons():
    policy = SitePrivacyPolicy(max_epsilon_per_dataset=3)
    assert policy.job_refusal_reasons("train", dp_enabled=True, secure_aggregation=True) == []
    assert policy.job_refusal_reasons("validate", dp_enabled=False, secure_aggregation=False) == []
    reasons = policy.job_refusal_reasons("train", dp_enabled=False, secure_aggregation=False)
    assert any("differential privacy" in r for r in reasons) and any("secure aggregation" in r for r in reasons)
    assert "not allowed" in policy.job_refusal_reasons("monitor", True, True)[0]
    relaxed = SitePrivacyPolicy(max_epsilon_per_dataset=3, require_dp=False, require_secure_aggregation=False)
    assert relaxed.job_refusal_reasons("train", dp_enabled=False, secure_aggregation=False) == []

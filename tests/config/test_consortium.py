from pathlib import Path

import pytest
import yaml

from ai4hi_sdk.config.consortium import load_consortium
from ai4hi_sdk.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "site_templates" / "consortium.example.yaml"


def _variant(tmp_path, change):
    data = yaml.safe_load(EXAMPLE.read_text())
    change(data)
    path = tmp_path / "consortium.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_example_is_valid():
    consortium = load_consortium(EXAMPLE)
    assert [s.name for s in consortium.sites] == ["hospital-1", "hospital-2", "hospital-3"]
    assert consortium.default_privacy_policy.require_dp


@pytest.mark.parametrize(
    "change,field,words",
    [
        (lambda d: d["sites"].append(dict(d["sites"][0])), "<root>", "duplicate site names"),
        (lambda d: d["sites"][0].update(name="Hospital 1"), "sites.0.name", "lowercase"),
        (lambda d: d["sites"][0].update(org="hospital-1"), "sites.0.org", "NVFlare's rule"),
        (lambda d: d["server"].update(fed_learn_port=80), "server.fed_learn_port", "greater than or equal to 1024"),
        (lambda d: d["server"].update(admin_port=d["server"]["fed_learn_port"]), "server", "must differ"),
        (lambda d: d["sites"][1].update(admin="nobody@x.org"), "<root>", "not listed under people"),
        (lambda d: d["sites"][0].pop("data_root"), "sites.0.data_root", "Field required"),
        (lambda d: d.update(people=[p for p in d["people"] if p["role"] != "lead"]), "<root>", "lead"),
        (lambda d: d["default_privacy_policy"].update(delta=0.5), "default_privacy_policy.delta", "less than"),
        (lambda d: d["people"][0].update(email="not-an-email"), "people.0.email", "e-mail"),
    ],
)
def test_errors_name_file_field_and_reason(tmp_path, change, field, words):
    path = _variant(tmp_path, change)
    with pytest.raises(ConfigError) as info:
        load_consortium(path)
    assert str(path) in str(info.value) and words in str(info.value)
    assert any(f == field for f, _ in info.value.problems), info.value.problems

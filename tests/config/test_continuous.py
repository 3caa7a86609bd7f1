"""Loop file schema: file/field/reason errors, and the CLI turns them into exit code 2."""

from __future__ import annotations

import pytest

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.config.continuous import load_continuous_spec
from ai4hi_sdk.errors import ConfigError


def test_errors_name_file_field_reason(tmp_path, capsys):
    (tmp_path / "job.yaml").write_text("name: j\n")
    (tmp_path / "policy.yaml").write_text("{}\n")
    loop = tmp_path / "loop.yaml"
    loop.write_text("job: job.yaml\npolicy: policy.yaml\nvalidation: {min_count: 1}\ndrift: {sitee: x}\n")
    with pytest.raises(ConfigError) as err:
        load_continuous_spec(loop)
    fields = {f for f, _ in err.value.problems}
    assert {"validation.min_count", "drift.sitee"} <= fields
    loop.write_text("job: missing.yaml\npolicy: policy.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_continuous_spec(loop)
    assert err.value.problems == [("job", f"file not found: {tmp_path / 'missing.yaml'}")]
    assert main(["continuous", "run", str(loop), "--data-root", str(tmp_path / "d"), "--workspace", str(tmp_path / "w")]) == 2
    assert "missing.yaml" in " ".join(capsys.readouterr().err.split())
    loop.write_text("job: job.yaml\npolicy: policy.yaml\n")
    assert load_continuous_spec(loop).validation.min_count == 10

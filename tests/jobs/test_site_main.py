from pathlib import Path

import yaml

from ai4hi_sdk.site.runtime import resolve_site_dir


def test_site_decides_where_its_data_is(tmp_path, monkeypatch):
    monkeypatch.delenv("AI4HI_SITE_DATA_DIR", raising=False)
    monkeypatch.delenv("AI4HI_DATA_ROOT", raising=False)
    assert resolve_site_dir("h1", "/job/root", tmp_path) == Path("/job/root/h1")
    (tmp_path / "ai4hi").mkdir()
    (tmp_path / "ai4hi" / "site.yaml").write_text(yaml.safe_dump({"data_dir": "/site/cxr"}))
    assert resolve_site_dir("h1", "/job/root", tmp_path) == Path("/site/cxr")
    monkeypatch.setenv("AI4HI_DATA_ROOT", "/env/root")
    assert resolve_site_dir("h1", "/job/root", tmp_path) == Path("/env/root/h1")
    monkeypatch.setenv("AI4HI_SITE_DATA_DIR", "/env/h1")
    assert resolve_site_dir("h1", "/job/root", tmp_path) == Path("/env/h1")

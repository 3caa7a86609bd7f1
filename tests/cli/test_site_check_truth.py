"""`ai4hi site check` checks the folder the site will actually read (AI4HI_SITE_DATA_DIR,
AI4HI_DATA_ROOT/<site>, else data_dir in ai4hi/site.yaml), not only the one given with --data;
a bad ai4hi/site.yaml is a one-line error."""

from __future__ import annotations

import shutil

import pytest
import yaml

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.data.synth import synth_site
from tests.deploy.conftest import provision_example


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    root = tmp_path_factory.mktemp("site_truth")
    synth_site(root / "data" / "hospital-1", site_index=0, n_studies=4, seed=1)
    return root, provision_example(root, data_root=root / "data")


@pytest.fixture
def kit(provisioned, tmp_path, monkeypatch):
    for name in ("AI4HI_SITE_DATA_DIR", "AI4HI_DATA_ROOT"):
        monkeypatch.delenv(name, raising=False)
    dest = tmp_path / "hospital-1"
    shutil.copytree(provisioned[1]["sites"]["hospital-1"]["kit"], dest)
    return dest, provisioned[0] / "data" / "hospital-1"


def _check(kit_dir, *extra):
    return main(["site", "check", str(kit_dir), *extra])


def test_the_folder_the_site_reads_must_exist_even_if_data_is_fine(kit, tmp_path, capsys):
    kit_dir, good = kit
    moved = tmp_path / "moved-away"
    (kit_dir / "ai4hi" / "site.yaml").write_text(yaml.safe_dump({"data_dir": str(moved)}))
    assert _check(kit_dir, "--data", str(good)) == 1  # was "ready": --data had DICOM
    captured = capsys.readouterr()
    err = _flat(captured.err)
    assert "not ready" in err and f"the site will read '{moved}'" in err and "site.yaml" in err
    assert f"the site will read: {moved} (data_dir in" in captured.out and "MISSING" in captured.out


def test_environment_wins_and_is_named(kit, tmp_path, capsys, monkeypatch):
    kit_dir, good = kit
    monkeypatch.setenv("AI4HI_SITE_DATA_DIR", str(tmp_path / "nowhere"))
    assert _check(kit_dir, "--data", str(good)) == 1
    assert "AI4HI_SITE_DATA_DIR in the environment" in _flat(capsys.readouterr().err)
    monkeypatch.delenv("AI4HI_SITE_DATA_DIR")
    monkeypatch.setenv("AI4HI_DATA_ROOT", str(good.parent))  # root/<site> is the good folder
    assert _check(kit_dir) == 0
    assert f"the site will read: {good} (AI4HI_DATA_ROOT in the environment" in capsys.readouterr().out


def test_a_different_data_folder_is_named(kit, tmp_path, capsys):
    kit_dir, good = kit
    other = tmp_path / "other"
    synth_site(other, site_index=1, n_studies=2, seed=2)
    assert _check(kit_dir, "--data", str(other)) == 0  # both exist: a warning that names the real one
    out = capsys.readouterr().out
    assert f"the site will read: {good} (data_dir in" in out
    assert f"the checks above are of --data {other}, which is not that folder" in out


@pytest.mark.parametrize("content", [b"data_dir: [unclosed\n", b"- a list\n", b"data_dir: 5\n",
                                     b"data_dir: /caf\xe9\n"])
def test_a_bad_site_yaml_is_a_one_line_error(kit, capsys, content):
    kit_dir, good = kit
    (kit_dir / "ai4hi" / "site.yaml").write_bytes(content)
    assert _check(kit_dir, "--data", str(good)) == 2
    err = capsys.readouterr().err
    assert "site.yaml" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err

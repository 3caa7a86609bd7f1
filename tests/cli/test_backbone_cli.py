"""``ai4hi site add-backbone`` (a site admin installs a base checkpoint once) and ``ai4hi job export
--checkpoint`` (the lead's job carries only its sha256): what each prints, and the refusals."""

from __future__ import annotations

import json

import torch

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.foundation.architectures import build_backbone
from ai4hi_sdk.foundation.checkpoint import Provenance, save_backbone, sha256_file
from ai4hi_sdk.foundation.presets import resolve_backbone
from ai4hi_sdk.site.backbones import locate_backbone


def _flat(text: str) -> str:
    return " ".join(text.split())


def _backbone(folder):
    torch.manual_seed(1)
    config = resolve_backbone("vit-micro-2d")
    save_backbone(build_backbone(config).state_dict(), folder, Provenance(arch="vit-micro-2d", arch_config=config,
                                                                          sha256=""))
    return sha256_file(folder / "backbone.safetensors")


def test_add_backbone_installs_it_by_sha256(tmp_path, capsys):
    sha = _backbone(tmp_path / "bb")
    (tmp_path / "kit").mkdir()
    assert main(["site", "add-backbone", str(tmp_path / "kit"), str(tmp_path / "bb"), "--sha256", sha]) == 0
    assert f"installed backbone {sha}" in _flat(capsys.readouterr().out)
    assert locate_backbone(tmp_path / "kit", sha) == tmp_path / "kit" / "ai4hi" / "backbones" / sha
    assert main(["site", "add-backbone", str(tmp_path / "kit"), str(tmp_path / "bb")]) == 0
    assert f"kept backbone {sha}" in _flat(capsys.readouterr().out)
    assert main(["site", "add-backbone", str(tmp_path / "kit"), str(tmp_path / "bb"), "--sha256", "0" * 64]) != 0
    assert "is not the expected" in _flat(capsys.readouterr().err)


def test_export_with_a_checkpoint_ships_only_its_sha256(tmp_path, capsys):
    sha = _backbone(tmp_path / "bb")
    assert main(["job", "export", "jobs/cxr_ffa_lora.yaml", "--out", str(tmp_path / "out"),
                 "--checkpoint", str(tmp_path / "bb")]) == 0
    out = _flat(capsys.readouterr().out)
    assert f"base checkpoint sha256 {sha}" in out and "ai4hi site add-backbone" in out
    client = json.loads(next((tmp_path / "out").rglob("config_fed_client.json")).read_text())
    job = client["executors"][0]["executor"]["args"]["job"]
    assert job["model"]["checkpoint_sha256"] == sha and "checkpoint" not in job["model"]
    assert not list((tmp_path / "out").rglob("*.safetensors"))
    # exporting the same job again replaces the earlier export (its payload is recognised as the same job)
    assert main(["job", "export", "jobs/cxr_ffa_lora.yaml", "--out", str(tmp_path / "out"),
                 "--checkpoint", str(tmp_path / "bb")]) == 0

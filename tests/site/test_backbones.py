"""The site's backbone store: install by sha256 (verified), locate before round 0, refuse a copy that
differs by one byte, a backbone the site does not hold, a malformed sha256; keep the store's file
names those of the foundation's checkpoints."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from ai4hi_sdk.errors import RoundRefused, UserError
from ai4hi_sdk.foundation import checkpoint, provenance
from ai4hi_sdk.foundation.architectures import build_backbone
from ai4hi_sdk.foundation.checkpoint import Provenance, save_backbone
from ai4hi_sdk.foundation.presets import resolve_backbone
from ai4hi_sdk.site import backbones
from ai4hi_sdk.site.backbones import install_backbone, installed_backbones, locate_backbone


@pytest.fixture
def backbone(tmp_path):
    torch.manual_seed(0)
    state = build_backbone(resolve_backbone("vit-micro-2d")).state_dict()
    folder = tmp_path / "bb"
    save_backbone(state, folder, Provenance(arch="vit-micro-2d", arch_config=resolve_backbone("vit-micro-2d"),
                                            sha256="", source="unit test", licence="CC0"))
    return folder


def flip_one_byte(path, offset=-1):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_store_file_names_are_the_checkpoints():
    assert backbones.BACKBONE_FILE == checkpoint.BACKBONE_FILE
    assert backbones.PROVENANCE_FILE == checkpoint.PROVENANCE_FILE
    assert backbones.CARD_FILE == provenance.CARD_FILE


def test_install_then_locate_by_sha256(backbone, tmp_path):
    sha = hashlib.sha256((backbone / "backbone.safetensors").read_bytes()).hexdigest()  # independent of the store's own hashing
    done = install_backbone(backbone, tmp_path / "site")
    assert done.sha256 == sha and done.action == "installed"
    assert done.folder == tmp_path / "site" / "ai4hi" / "backbones" / sha
    assert locate_backbone(tmp_path / "site", sha) == done.folder
    assert locate_backbone(tmp_path / "site", sha.upper()) == done.folder
    assert (done.folder / "provenance.json").is_file()
    assert install_backbone(backbone / "backbone.safetensors", tmp_path / "site").action == "kept"
    assert [b["sha256"] for b in installed_backbones(tmp_path / "site")] == [sha]
    assert installed_backbones(tmp_path / "site")[0]["source"] == "unit test"


def test_a_copy_that_differs_by_one_byte_is_refused_and_reinstalling_repairs_it(backbone, tmp_path):
    done = install_backbone(backbone, tmp_path / "site")
    flip_one_byte(done.folder / "backbone.safetensors")
    with pytest.raises(RoundRefused, match=f"has sha256 [0-9a-f]{{64}}, but the job expects {done.sha256}"):
        locate_backbone(tmp_path / "site", done.sha256)
    assert install_backbone(backbone, tmp_path / "site").action == "replaced"
    assert locate_backbone(tmp_path / "site", done.sha256) == done.folder


def test_refusals_name_the_reason(backbone, tmp_path):
    sha = hashlib.sha256((backbone / "backbone.safetensors").read_bytes()).hexdigest()
    with pytest.raises(RoundRefused, match="does not hold the backbone .* `ai4hi site add-backbone"):
        locate_backbone(tmp_path / "site", sha)
    with pytest.raises(RoundRefused, match="not a sha256 hex digest"):
        locate_backbone(tmp_path / "site", "../../etc")
    with pytest.raises(RoundRefused, match="no workspace"):
        locate_backbone(None, sha)


def test_install_refuses_a_folder_that_does_not_verify(backbone, tmp_path):
    with pytest.raises(UserError, match="is not the expected " + "0" * 64):
        install_backbone(backbone, tmp_path / "site", expected_sha256="0" * 64)
    flip_one_byte(backbone / "backbone.safetensors")
    with pytest.raises(UserError, match="but its provenance record says"):
        install_backbone(backbone, tmp_path / "site")
    (backbone / "provenance.json").unlink()
    with pytest.raises(UserError, match="no provenance.json"):
        install_backbone(backbone, tmp_path / "site")
    assert not (tmp_path / "site" / "ai4hi" / "backbones").exists() or not installed_backbones(tmp_path / "site")
    record = tmp_path / "other" / "provenance.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(UserError, match="no backbone.safetensors"):
        install_backbone(record.parent, tmp_path / "site")

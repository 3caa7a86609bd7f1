"""Checkpoint import: formats, prefix stripping, named shape/key problems, refusal of unsafe
pickles, sha256 verification (one changed byte), BatchNorm statistics kept frozen, the backbone
card, and the ``ai4hi model`` CLI through the real entry point."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ai4hi_sdk.cli import main as cli_main
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.adaptation import apply_adaptation
from ai4hi_sdk.foundation.architectures import BackboneClassifier, build_backbone
from ai4hi_sdk.foundation.batchnorm import FrozenBatchNorm, freeze_batchnorm
from ai4hi_sdk.foundation.checkpoint import (
    BACKBONE_FILE,
    PROVENANCE_FILE,
    import_checkpoint,
    load_backbone,
    read_state_dict,
)
from ai4hi_sdk.foundation.mae import build_mae
from ai4hi_sdk.foundation.provenance import CARD_FILE, backbone_card, export_pretrained_backbone


def _vit_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return build_backbone("vit-micro-2d").state_dict()


def test_safetensors_with_wrapper_prefixes_round_trips(tmp_path):
    state = _vit_state()
    source = tmp_path / "ddp.safetensors"
    save_file({f"module.encoder.{k}": v.contiguous() for k, v in state.items()}, str(source))
    result = import_checkpoint(source, "vit-micro-2d", tmp_path / "out", source="unit test", licence="CC0-1.0")
    record = json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())
    assert record["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert record["sha256"] == hashlib.sha256((tmp_path / "out" / BACKBONE_FILE).read_bytes()).hexdigest()
    assert (record["source"], record["licence"], record["source_format"]) == ("unit test", "CC0-1.0", "safetensors")
    assert record["stripped_prefixes"] == {"module.": len(state), "encoder.": len(state)}
    written = load_file(str(tmp_path / "out" / BACKBONE_FILE))
    assert written.keys() == state.keys() and all(torch.equal(written[k], state[k]) for k in state)
    assert result.provenance.parameters == sum(v.numel() for v in state.values())


def test_pt_goes_through_weights_only_and_wrappers_are_unwrapped(tmp_path):
    state = _vit_state()
    source = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}, source)
    loaded, fmt = read_state_dict(source)
    assert fmt == "torch" and set(loaded) == {f"model.{k}" for k in state}
    import_checkpoint(source, "vit-micro-2d", tmp_path / "out")


class _Payload:
    """A pickle that would write a file when unpickled (the cheating checkpoint)."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path):
    payload = _Payload()
    payload.marker = str(tmp_path / "pwned.txt")
    evil = tmp_path / "evil.pt"
    torch.save({"weight": payload}, evil)
    with pytest.raises(UserError, match="refused: the file holds more than tensors"):
        read_state_dict(evil)
    assert not (tmp_path / "pwned.txt").exists()
    with pytest.raises(UserError, match="refused"):
        import_checkpoint(evil, "vit-micro-2d", tmp_path / "out")
    assert not (tmp_path / "pwned.txt").exists() and not (tmp_path / "out").exists()
    # the payload is real: a plain unpickling would have run it
    torch.load(evil, weights_only=False)
    assert (tmp_path / "pwned.txt").read_text() == "pwned"


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path):
    state = _vit_state()
    state["blocks.1.mlp.linear1.weight"] = torch.zeros(7, 48)
    source = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(source))
    with pytest.raises(UserError) as err:
        import_checkpoint(source, "vit-micro-2d", tmp_path / "out")
    assert "'blocks.1.mlp.linear1.weight' has shape [7, 48], the architecture expects [96, 48]" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = _vit_state()
    del state["blocks.0.attn.qkv.weight"]
    state["classification_head.weight"] = torch.zeros(2, 48)
    source = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(source))
    with pytest.raises(UserError, match=r"missing keys: blocks\.0\.attn\.qkv\.weight.*unexpected keys: "
                                        r"classification_head\.weight"):
        import_checkpoint(source, "vit-micro-2d", tmp_path / "out")
    state["blocks.0.attn.qkv.weight"] = _vit_state()["blocks.0.attn.qkv.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(source))
    with pytest.raises(UserError, match="unexpected keys"):
        import_checkpoint(source, "vit-micro-2d", tmp_path / "out")
    result = import_checkpoint(source, "vit-micro-2d", tmp_path / "out", allow_unexpected=True)
    assert result.provenance.dropped_keys == ["classification_head.weight"]


def test_a_full_mae_checkpoint_is_reduced_to_its_encoder(tmp_path):
    torch.manual_seed(0)
    mae = build_mae("vit-micro-2d")
    source = tmp_path / "mae.safetensors"
    save_file({k: v.contiguous() for k, v in mae.state_dict().items()}, str(source))
    result = import_checkpoint(source, "vit-micro-2d", tmp_path / "out")
    assert "MaskedAutoEncoderViT" in result.provenance.converted_from
    assert torch.equal(result.state["norm.weight"], mae.state_dict()["blocks.3.weight"])


def test_one_changed_byte_is_refused(tmp_path):
    source = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in _vit_state().items()}, str(source))
    result = import_checkpoint(source, "vit-micro-2d", tmp_path / "out")
    state, provenance = load_backbone(tmp_path / "out", expected_sha256=result.provenance.sha256)
    assert provenance.sha256 == result.provenance.sha256 and state
    weights = tmp_path / "out" / BACKBONE_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="refused: .* has sha256"):
        load_backbone(tmp_path / "out")
    # a provenance record rewritten to match the tampered file still fails the hash the job expects
    record = json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())
    record["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (tmp_path / "out" / PROVENANCE_FILE).write_text(json.dumps(record))
    load_backbone(tmp_path / "out")  # consistent with its (forged) record...
    with pytest.raises(UserError, match="but the job expects"):
        load_backbone(tmp_path / "out", expected_sha256=result.provenance.sha256)


def _trained_bn_resnet_state() -> dict:
    torch.manual_seed(0)
    net = build_backbone("resnet-micro-2d")
    net.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from (0, 1)
            net(torch.rand(8, 1, 32, 32) * 3 + 1)
    return net.state_dict()


def test_batchnorm_statistics_survive_import_adaptation_and_training(tmp_path):
    state = _trained_bn_resnet_state()
    source = tmp_path / "resnet.pt"
    torch.save(state, source)
    result = import_checkpoint(source, "resnet-micro-2d", tmp_path / "out")
    assert "bn1" in result.provenance.batchnorm_layers
    loaded, _ = load_backbone(tmp_path / "out")
    model = BackboneClassifier("resnet-micro-2d")
    model.encoder.load_state_dict(loaded)
    replaced = freeze_batchnorm(model.encoder)
    assert "bn1" in replaced and isinstance(model.encoder.bn1, FrozenBatchNorm)
    assert set(model.encoder.state_dict()) == set(state)  # same names as the BatchNorm
    names = apply_adaptation(model, "ffa_lora")
    assert not any("bn" in n or "downsample.1" in n for n in names)
    x = torch.rand(4, 1, 32, 32) * 3 + 1
    model.eval()
    eval_out = model(x)
    model.train()  # a training-mode forward must still use the checkpoint's statistics
    assert torch.allclose(model(x), eval_out, atol=1e-6)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(model(x), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    after = model.encoder.state_dict()
    for name in ("bn1.running_mean", "bn1.running_var", "bn1.weight", "bn1.bias"):
        assert torch.equal(after[name], state[name]), name
    assert not torch.allclose(state["bn1.running_mean"], torch.zeros_like(state["bn1.running_mean"]))


def test_frozen_batchnorm_model_takes_a_dp_sgd_step_without_groupnorm(tmp_path):
    from ai4hi_sdk.privacy.dp.dpsgd import DPSGDSession, RoundPlan, make_dp_compatible

    state = _trained_bn_resnet_state()
    model = BackboneClassifier("resnet-micro-2d")
    model.encoder.load_state_dict(state)
    freeze_batchnorm(model.encoder)
    apply_adaptation(model, "ffa_lora")
    model, changes = make_dp_compatible(model)
    assert not any("GroupNorm" in c for c in changes)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    session = DPSGDSession(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = session.private_optimizer(torch.optim.SGD(trainable, lr=0.1), RoundPlan(1.0, 0.5, 1, 1.0), 4,
                                          torch.Generator().manual_seed(0))
    before = [p.clone() for p in trainable]
    F.cross_entropy(session.wrapped(torch.rand(4, 1, 32, 32)), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))
    assert torch.equal(model.encoder.bn1.running_var, state["bn1.running_var"])


def test_pretrained_backbone_export_and_card(tmp_path):
    torch.manual_seed(0)
    mae = build_mae("vit-micro-2d")
    provenance = export_pretrained_backbone(
        mae.state_dict(), "vit-micro-2d", tmp_path / "bb", site_images={"hospital-1": 120, "hospital-2": 80},
        rounds=5, local_epochs=2, epsilon={"hospital-1": 3.5, "hospital-2": 4.25}, delta=1e-5,
        masking_ratio=0.75, modality="CR/DX", version="2024.1")
    card = provenance.card
    assert card["sha256"] == hashlib.sha256((tmp_path / "bb" / BACKBONE_FILE).read_bytes()).hexdigest()
    assert (card["images_total"], card["site_count"], card["epochs_total"], card["epsilon_max"]) == (200, 2, 10, 4.25)
    assert json.loads((tmp_path / "bb" / PROVENANCE_FILE).read_text())["card"] == card
    assert "| hospital-2 | 80 | 4.25 |" in (tmp_path / "bb" / CARD_FILE).read_text()
    state, record = load_backbone(tmp_path / "bb", expected_sha256=card["sha256"])
    assert record.kind == "pretrained" and "decoder_embed.weight" not in state
    plain = backbone_card(arch="vit-micro-2d", site_images={"a": 1}, rounds=1, local_epochs=1, sha256="a" * 64)
    assert plain["differential_privacy"] is False and plain["sites"]["a"]["epsilon"] is None
    with pytest.raises(UserError, match="sha256"):
        backbone_card(arch="vit-micro-2d", site_images={"a": 1}, rounds=1, local_epochs=1, sha256="xyz")


# ---------------------------------------------------------------------------------------- CLI


def test_cli_import_writes_the_backbone_and_prints_hashes(tmp_path, capsys):
    source = tmp_path / "vit.safetensors"
    save_file({f"_module.{k}": v.contiguous() for k, v in _vit_state().items()}, str(source))
    out = tmp_path / "imported"
    rc = cli_main.main(["model", "import", str(source), "--arch", "vit-micro-2d", "--source", "unit",
                        "--licence", "MIT", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert record["sha256"] in text and record["source_sha256"] in text and "_module. (" in text
    assert record["licence"] == "MIT"
    rc = cli_main.main(["model", "import", str(source), "--arch", "vit-micro-2d", "--out", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_cli_wrong_arch_is_one_line_error(tmp_path, capsys):
    source = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in _vit_state().items()}, str(source))
    rc = cli_main.main(["model", "import", str(source), "--arch", "vit-micro-3d", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not fit the architecture" in err and "Traceback" not in err
    rc = cli_main.main(["model", "import", str(tmp_path / "none.safetensors"), "--arch", "vit-micro-2d",
                        "--out", str(tmp_path / "o")])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err


def test_model_cli_help_imports_no_torch():
    code = ("import sys; import ai4hi_sdk.cli.model as m, argparse; p = argparse.ArgumentParser(); "
            "m.register(p.add_subparsers()); print('torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"

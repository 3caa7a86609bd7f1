"""apply_adaptation: which tensors train in each mode (checked against autograd), that a step moves
only those, and the upload size counted independently."""

import pytest
import torch
import torch.nn.functional as F

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.adaptation import (
    ADAPTATION_MODES,
    AdaptationConfig,
    apply_adaptation,
    trainable_state,
    upload_size,
)
from ai4hi_sdk.foundation.architectures import BackboneClassifier, build_unetr
from ai4hi_sdk.foundation.lora import LoRAConfig
from ai4hi_sdk.foundation.presets import PRESETS, resolve_backbone


def _classifier(backbone: str = "vit-micro-2d") -> BackboneClassifier:
    torch.manual_seed(0)
    return BackboneClassifier(backbone)


@pytest.mark.parametrize("mode", ADAPTATION_MODES)
def test_trainable_names_are_exactly_what_autograd_reaches(mode):
    model = _classifier()
    names = apply_adaptation(model, mode)
    F.cross_entropy(model(torch.randn(3, 1, 32, 32)), torch.tensor([0, 1, 1])).backward()
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert names == with_grad
    assert names == [n for n in model.state_dict() if n in set(names)]  # state-dict order


def test_each_mode_trains_the_expected_parts():
    def names(mode, **kw):
        return set(apply_adaptation(_classifier(), AdaptationConfig(mode=mode, **kw)))

    head = {"head.weight", "head.bias"}
    assert names("linear_probe") == head
    lora, ffa = names("lora"), names("ffa_lora")
    assert ffa - head and all(".lora_B." in n for n in ffa - head)
    assert lora - head == (ffa - head) | {n.replace("lora_B", "lora_A") for n in ffa - head}
    partial = names("partial", blocks=1)
    assert {n.split(".")[2] for n in partial - head if n.startswith("encoder.blocks.")} == {"2"}  # last of 3
    assert {"encoder.norm.weight", "encoder.norm.bias"} <= partial
    full = names("full")
    every = {n for n, _ in _classifier().named_parameters()}
    never = {n for n in every if "norm_cross_attn" in n or "position_embeddings" in n}
    assert never and full == every - never


def test_a_step_changes_only_the_trainable_tensors():
    model = _classifier()
    names = set(apply_adaptation(model, "ffa_lora"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(4, 1, 32, 32)), torch.tensor([0, 1, 0, 1])).backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == names


def test_upload_size_counts_match_the_layer_shapes():
    model = _classifier()
    rank = 3
    names = apply_adaptation(model, AdaptationConfig(mode="ffa_lora", lora=LoRAConfig(rank=rank)))
    expected = 0
    for module in BackboneClassifier("vit-micro-2d").encoder.modules():  # un-adapted copy
        if type(module) is torch.nn.Linear:
            expected += module.out_features * rank
        elif type(module) is torch.nn.Conv2d:
            expected += module.out_channels * rank
    expected += 48 * 2 + 2  # head
    size = upload_size(model, names)
    assert size["trainable_elements"] == expected
    full = sum(t.numel() for t in BackboneClassifier("vit-micro-2d").state_dict().values())
    assert size["full_model_elements"] == full
    assert trainable_state(model).keys() == set(names)


def test_vit_b_upload_under_two_percent():
    torch.manual_seed(0)
    model = BackboneClassifier("vit-b16-2d")
    size = upload_size(model, apply_adaptation(model, "ffa_lora"))
    assert 80e6 < size["full_model_elements"] < 90e6  # ViT-B/16: ~86 M
    assert size["percent"] < 2.0


def test_resnet_backbone_adapts_its_convolutions():
    model = _classifier("resnet-micro-2d")
    names = apply_adaptation(model, "lora")
    assert any(n.startswith("encoder.conv1.lora_A") for n in names)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_unetr_head_is_the_decoder():
    torch.manual_seed(0)
    model = build_unetr("vit-unetr-micro-3d", out_channels=2, feature_size=8)
    names = apply_adaptation(model, "linear_probe")
    assert names and not any(n.startswith("vit.") for n in names)
    assert any(n.startswith("decoder2.") for n in names) and any(n.startswith("out.") for n in names)
    with pytest.raises(UserError, match="patch_size 16"):
        build_unetr("vit-micro-3d", out_channels=2)


def test_max_pool_takes_each_feature_over_tokens():
    torch.manual_seed(0)
    model = BackboneClassifier("vit-micro-2d", pool="max").eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        tokens, _ = model.encoder(x)
        expected = torch.stack([torch.stack([tokens[b, :, f].max() for f in range(48)]) for b in range(2)])
        assert torch.allclose(model.features(x), expected)
        assert torch.allclose(model(x), model.head(expected))
    with pytest.raises(UserError, match="pool must be one of"):
        BackboneClassifier("vit-micro-2d", pool="attention")


def test_bad_adaptations_are_user_errors():
    with pytest.raises(UserError, match="unknown adaptation"):
        AdaptationConfig(mode="prompt")
    with pytest.raises(UserError, match="last 9 blocks"):
        apply_adaptation(_classifier(), AdaptationConfig(mode="partial", blocks=9))
    with pytest.raises(UserError, match="unknown keys"):
        AdaptationConfig.from_mapping({"mode": "lora", "rnk": 2})
    model = _classifier()
    apply_adaptation(model, "lora")
    with pytest.raises(UserError, match="already carries adapters"):
        apply_adaptation(model, "lora")


def test_from_mapping_reads_job_spec_values():
    config = AdaptationConfig.from_mapping({"mode": "lora", "rank": 8, "alpha": 16, "targets": ["attn.qkv"]},
                                           default_seed=5)
    assert (config.mode, config.lora.rank, config.lora.alpha, config.lora.seed, config.targets) == \
        ("lora", 8, 16.0, 5, ("attn.qkv",))
    assert AdaptationConfig.from_mapping(None).mode == "ffa_lora"


def test_presets_resolve_and_bad_ones_are_named():
    for name in PRESETS:
        assert resolve_backbone(name)["family"] in ("vit", "resnet")
    assert resolve_backbone({"preset": "vit-micro-2d", "img_size": 64})["img_size"] == 64
    with pytest.raises(UserError, match="unknown backbone architecture 'vit-huge'"):
        resolve_backbone("vit-huge")
    with pytest.raises(UserError, match="not a multiple of patch_size"):
        resolve_backbone({"preset": "vit-micro-2d", "img_size": 30})
    with pytest.raises(UserError, match="unknown keys"):
        resolve_backbone({"preset": "vit-micro-2d", "depth": 3})

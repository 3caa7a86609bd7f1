"""LoRA / FFA-LoRA layers: outputs against the merged weight computed independently, shared-seed
A, merge back to the base names, opacus per-sample gradients, and the FedAvg exactness that
justifies FFA-LoRA (and its absence for plain LoRA)."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.adaptation import AdaptationConfig, apply_adaptation, trainable_state
from ai4hi_sdk.foundation.architectures import BackboneClassifier
from ai4hi_sdk.foundation.lora import (
    LoRAConfig,
    LoRAConv1d,
    LoRAConv2d,
    LoRAConv3d,
    LoRALinear,
    inject_lora,
    is_lora_layer,
    merge_lora,
)


def _randomise_b(module: nn.Module, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if is_lora_layer(layer):
            with torch.no_grad():
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen))


def test_linear_adapter_starts_at_base_and_adds_scaled_ba():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, LoRAConfig(rank=3, alpha=6.0), "x")
    x = torch.randn(4, 7, 6)
    assert torch.equal(layer(x), base(x))  # B = 0
    _randomise_b(layer)
    a, b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
    expected = F.linear(x, base.weight + 2.0 * (b @ a), base.bias)  # alpha / rank = 2
    assert torch.allclose(layer(x), expected, atol=1e-5)


@pytest.mark.parametrize("conv_cls, lora_cls, shape", [
    (nn.Conv1d, LoRAConv1d, (2, 3, 11)),
    (nn.Conv2d, LoRAConv2d, (2, 3, 9, 10)),
    (nn.Conv3d, LoRAConv3d, (2, 3, 7, 8, 6)),
])
def test_conv_adapter_equals_conv_with_merged_kernel(conv_cls, lora_cls, shape):
    torch.manual_seed(0)
    base = conv_cls(3, 4, 3, stride=2, padding=1, dilation=1)
    layer = lora_cls(base, LoRAConfig(rank=2, alpha=2.0), "conv")
    _randomise_b(layer)
    a, b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
    # reference: the rank-2 kernel update written as explicit sums over r
    delta = torch.zeros_like(base.weight)
    for o, r in itertools.product(range(4), range(2)):
        delta[o] += b[o, r].flatten()[0] * a[r]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(shape) - 2]
    x = torch.randn(shape)
    expected = conv(x, base.weight + delta, base.bias, stride=2, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_merge_gives_back_plain_layers_with_base_names_and_same_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    base_names = set(model.state_dict())
    inject_lora(model, LoRAConfig(rank=2))
    assert set(model.state_dict()) == base_names | {"0.lora_A.weight", "0.lora_B.weight",
                                                    "3.lora_A.weight", "3.lora_B.weight"}
    _randomise_b(model)
    x = torch.randn(5, 1, 8, 8)
    before = model(x)
    assert merge_lora(model) == 2
    assert set(model.state_dict()) == base_names
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Linear
    assert torch.allclose(model(x), before, atol=1e-5)


def test_a_comes_from_the_shared_seed_not_the_global_rng():
    def adapted(global_seed: int, lora_seed: int) -> dict:
        torch.manual_seed(global_seed)
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
        torch.manual_seed(global_seed + 100)  # different global RNG state at injection time
        inject_lora(model, LoRAConfig(rank=2, seed=lora_seed))
        return {k: v for k, v in model.state_dict().items() if "lora_A" in k}

    site_1, site_2, other_seed = adapted(1, 7), adapted(2, 7), adapted(1, 8)
    assert all(torch.equal(site_1[k], site_2[k]) for k in site_1)
    assert all(not torch.equal(site_1[k], other_seed[k]) for k in site_1)
    assert not torch.equal(site_1["0.lora_A.weight"], site_1["1.lora_A.weight"])  # per layer


def test_injection_does_not_consume_the_global_rng():
    model = nn.Sequential(nn.Linear(8, 8), nn.Conv1d(2, 2, 3))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    inject_lora(model, LoRAConfig(rank=2))
    assert torch.equal(torch.rand(3), expected)


def test_ffa_freezes_a_and_base_and_trains_only_b():
    model = nn.Sequential(nn.Linear(8, 8))
    inject_lora(model, LoRAConfig(rank=2, freeze_a=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.lora_B.weight"}


def test_bad_configurations_are_user_errors():
    with pytest.raises(UserError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(UserError, match="dropout"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(UserError, match="grouped"):
        inject_lora(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), LoRAConfig())
    with pytest.raises(UserError, match="no Linear or Conv"):
        inject_lora(nn.Sequential(nn.ReLU()), LoRAConfig())


def test_opacus_per_sample_gradients_of_adapters_match_a_per_example_loop():
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    inject_lora(model, LoRAConfig(rank=2))
    _randomise_b(model)  # non-zero B so that A gets a gradient
    reference = copy.deepcopy(model)
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 1, 0])
    wrapped = GradSampleModule(model)
    F.cross_entropy(wrapped(x), y).backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    params = dict(model.named_parameters())
    ref_params = dict(reference.named_parameters())
    for i in range(4):
        reference.zero_grad()
        F.cross_entropy(reference(x[i:i + 1]), y[i:i + 1]).backward()
        for name in trainable:
            # opacus (loss_reduction="mean") undoes the batch mean: grad_sample[i] = grad of loss_i
            assert torch.allclose(params[name].grad_sample[i], ref_params[name].grad, atol=1e-5), name


def _site_round(mode: str, site: int, steps: int = 6) -> tuple[dict, dict]:
    """One site's local training from the shared initial model: (trainable tensors, merged weights)."""
    torch.manual_seed(0)
    model = BackboneClassifier("vit-micro-2d")
    apply_adaptation(model, AdaptationConfig(mode=mode, lora=LoRAConfig(rank=2, alpha=4.0, seed=11)))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    gen = torch.Generator().manual_seed(100 + site)
    for _ in range(steps):
        x = torch.randn(6, 1, 32, 32, generator=gen) + site
        y = torch.randint(0, 2, (6,), generator=gen)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    exchanged = trainable_state(model)
    merged = copy.deepcopy(model)
    merge_lora(merged)
    return exchanged, {k: v.detach().clone() for k, v in merged.state_dict().items() if k.startswith("encoder.")}


def _fedavg(states: list[dict], weights: list[float]) -> dict:
    total = sum(weights)
    return {k: sum(w * s[k] for s, w in zip(states, weights)) / total for k in states[0]}


@pytest.mark.parametrize("mode", ["ffa_lora", "lora"])
def test_fedavg_of_adapters_vs_fedavg_of_weight_updates(mode):
    weights = [10.0, 25.0, 40.0]
    rounds = [_site_round(mode, site) for site in range(3)]
    # what the server computes: FedAvg of the exchanged (trainable) tensors only
    averaged = _fedavg([exchanged for exchanged, _ in rounds], weights)
    torch.manual_seed(0)
    global_model = BackboneClassifier("vit-micro-2d")
    names = apply_adaptation(global_model, AdaptationConfig(mode=mode, lora=LoRAConfig(rank=2, alpha=4.0, seed=11)))
    assert set(averaged) == set(names)
    global_model.load_state_dict(averaged, strict=False)
    merge_lora(global_model)
    from_adapters = {k: v for k, v in global_model.state_dict().items() if k.startswith("encoder.")}
    # the ideal: FedAvg of every site's full (merged) encoder weights
    ideal = _fedavg([merged for _, merged in rounds], weights)
    torch.manual_seed(0)  # the shared initial model: only for the size of the update
    base = BackboneClassifier("vit-micro-2d").state_dict()
    update_norm = torch.sqrt(sum(((ideal[k] - base[k]) ** 2).sum() for k in ideal))
    error = torch.sqrt(sum(((from_adapters[k] - ideal[k]) ** 2).sum() for k in ideal))
    assert update_norm > 1e-2, "sites did not move the encoder"
    if mode == "ffa_lora":
        assert error / update_norm < 1e-5  # exact up to float32 rounding
    else:
        assert error / update_norm > 1e-2  # mean(B) mean(A) != mean(B A)

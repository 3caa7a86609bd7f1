import pytest
import torch
from torch import nn

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.privacy.dp.dpsgd import DPSGDSession, RoundPlan, make_dp_compatible


def test_batchnorm_and_inplace_are_fixed_and_reported():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 1, 8, 8))  # materialise the lazy layer
    fixed, changes = make_dp_compatible(model)
    assert any("BatchNorm2d -> GroupNorm" in c for c in changes)
    assert any("inplace=False" in c for c in changes)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert not any(getattr(m, "inplace", False) for m in fixed.modules())


def test_incompatible_layer_is_a_clear_error(monkeypatch):
    # opacus 1.6 fixes or falls back (functorch) for every stock layer; what its validator still
    # reports must reach the user as one clear error before training starts
    from opacus.validators import ModuleValidator

    monkeypatch.setattr(ModuleValidator, "validate",
                        classmethod(lambda cls, module, strict=False: ["CustomLayer: no per-sample gradient"]))
    with pytest.raises(UserError, match="cannot be trained with DP-SGD: CustomLayer"):
        make_dp_compatible(nn.Linear(2, 2))


def test_private_step_clips_each_example_and_adds_noise():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    session = DPSGDSession(model, "hooks")
    plan = RoundPlan(noise_multiplier=0.0, sample_rate=0.5, steps=1, max_grad_norm=0.1)
    optimizer = session.private_optimizer(torch.optim.SGD(model.parameters(), lr=1.0), plan, 4,
                                          torch.Generator().manual_seed(0))
    x = torch.randn(4, 3) * 100  # huge per-example gradients
    before = model.weight.detach().clone()
    session.wrapped(x).sum().backward()
    optimizer.step()
    step = (model.weight.detach() - before).norm()
    # mean of 4 clipped gradients, each of norm <= 0.1, with no noise: the step is at most 0.1
    assert step <= 0.1 + 1e-6
    # with noise the step changes
    plan_noisy = RoundPlan(noise_multiplier=5.0, sample_rate=0.5, steps=1, max_grad_norm=0.1)
    optimizer = session.private_optimizer(torch.optim.SGD(model.parameters(), lr=1.0), plan_noisy, 4,
                                          torch.Generator().manual_seed(1))
    before = model.weight.detach().clone()
    optimizer.zero_grad()
    session.wrapped(x).sum().backward()
    optimizer.step()
    assert (model.weight.detach() - before).norm() > 0.1


@pytest.mark.parametrize("mode", ["hooks", "ew"])
def test_state_keeps_inner_names(mode):
    model = nn.Sequential(nn.Linear(3, 2))
    session = DPSGDSession(model, mode)
    assert set(model.state_dict()) == {"0.weight", "0.bias"}
    assert session.model is model

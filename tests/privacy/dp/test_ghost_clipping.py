"""Ghost / Fast Gradient Clipping (``grad_sample_mode="ghost"``) computes the same private step as
per-sample gradients (``hooks``) and as per-example clipping done by hand."""

import pytest
import torch
from torch import nn

from ai4hi_sdk.privacy.dp.dpsgd import DPSGDSession, PerSampleLoss, RoundPlan

BATCH, EXPECTED_BATCH = 6, 8  # Poisson batches differ from the expected size the mean divides by


def _classifier() -> nn.Module:
    # Linear: ghost norms; Conv2d / GroupNorm: opacus grad samplers; PReLU: functorch fallback
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.PReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _segmenter() -> nn.Module:
    # voxel-wise loss; ConvTranspose3d goes through functorch in both modes
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.PReLU(),
                         nn.ConvTranspose3d(4, 2, 2, stride=2))


def _data(kind: str):
    g = torch.Generator().manual_seed(1)
    if kind == "classifier":
        return torch.randn(BATCH, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (BATCH,), generator=g)
    return (torch.randn(BATCH, 1, 4, 4, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 2, (BATCH, 8, 8, 8), generator=g))


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return (_classifier() if kind == "classifier" else _segmenter()).double()


def _manual(kind: str, max_grad_norm: float):
    """Per-example gradients one example at a time, clipped, summed, divided by EXPECTED_BATCH."""
    model, (x, y) = _model(kind), _data(kind)
    params = list(model.parameters())
    total, norms = [torch.zeros_like(p) for p in params], []
    for i in range(BATCH):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        coef = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        norms.append(float(norm))
        for t, g in zip(total, grads):
            t += coef * g
    return [t / EXPECTED_BATCH for t in total], norms


def _private_step(kind: str, mode: str, max_grad_norm: float):
    """One private SGD step (lr 1, no noise); returns (-update per parameter, session)."""
    model, (x, y) = _model(kind), _data(kind)
    session = DPSGDSession(model, mode)
    plan = RoundPlan(noise_multiplier=0.0, sample_rate=EXPECTED_BATCH / 100, steps=1, max_grad_norm=max_grad_norm)
    optimizer = session.private_optimizer(torch.optim.SGD(model.parameters(), lr=1.0), plan, EXPECTED_BATCH,
                                          torch.Generator().manual_seed(0))
    loss_fn = session.private_loss(nn.CrossEntropyLoss())
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(session.wrapped(x), y)
    loss.backward()
    optimizer.step()
    return [b - p.detach() for b, p in zip(before, model.parameters())], session, float(loss.detach())


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_ghost_step_equals_hooks_and_manual_clipping(kind):
    _, norms = _manual(kind, 1e9)
    ordered = sorted(norms)
    max_grad_norm = (ordered[BATCH // 2 - 1] + ordered[BATCH // 2]) / 2  # half the examples are clipped
    assert min(norms) < max_grad_norm < max(norms)
    manual, _ = _manual(kind, max_grad_norm)
    hooks, _, hooks_loss = _private_step(kind, "hooks", max_grad_norm)
    ghost, session, ghost_loss = _private_step(kind, "ghost", max_grad_norm)
    assert ghost_loss == pytest.approx(hooks_loss, abs=1e-12)  # the reported loss is the batch mean
    for m, h, g in zip(manual, hooks, ghost):
        assert torch.allclose(h, m, atol=1e-5, rtol=0), (h - m).abs().max()
        assert torch.allclose(g, m, atol=1e-5, rtol=0), (g - m).abs().max()
    # opacus's per-example norms are the true ones, and each example's weight clips it to max_grad_norm
    assert torch.allclose(session.wrapped.per_sample_gradient_norms, torch.tensor(norms, dtype=torch.float64),
                          atol=1e-6)
    coef = session.wrapped.get_clipping_coef()
    clipped = coef * torch.tensor(norms, dtype=torch.float64)
    assert torch.all(clipped <= max_grad_norm + 1e-9)
    big = torch.tensor(norms) > max_grad_norm
    assert torch.allclose(clipped[big], torch.full_like(clipped[big], max_grad_norm), atol=1e-5)
    assert torch.all(coef[~big] == 1.0)


def test_ghost_one_huge_example_moves_max_grad_norm_over_expected_batch():
    model = nn.Linear(3, 2)
    session = DPSGDSession(model, "ghost")
    plan = RoundPlan(noise_multiplier=0.0, sample_rate=0.25, steps=1, max_grad_norm=0.1)
    optimizer = session.private_optimizer(torch.optim.SGD(model.parameters(), lr=1.0), plan, 4,
                                          torch.Generator().manual_seed(0))
    loss_fn = session.private_loss(nn.CrossEntropyLoss())
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loss_fn(session.wrapped(torch.full((1, 3), 1e4)), torch.tensor([0])).backward()
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() == pytest.approx(0.1 / 4, rel=1e-4)
    # the session is reused across rounds: the next round's clipping norm applies
    plan = RoundPlan(noise_multiplier=0.0, sample_rate=0.25, steps=1, max_grad_norm=0.3)
    optimizer = session.private_optimizer(torch.optim.SGD(model.parameters(), lr=1.0), plan, 4,
                                          torch.Generator().manual_seed(0))
    loss_fn = session.private_loss(nn.CrossEntropyLoss())
    optimizer.zero_grad(set_to_none=True)
    loss_fn(session.wrapped(torch.full((1, 3), 1e4)), torch.tensor([0])).backward()
    optimizer.step()
    assert (torch.cat([p.detach().flatten() for p in model.parameters()]) - after).norm() == pytest.approx(
        0.3 / 4, rel=1e-4)


def test_ghost_noise_has_the_planned_scale():
    torch.manual_seed(0)
    model = nn.Linear(50, 40, bias=False)
    session = DPSGDSession(model, "ghost")
    plan = RoundPlan(noise_multiplier=2.0, sample_rate=0.25, steps=1, max_grad_norm=0.5)
    optimizer = session.private_optimizer(torch.optim.SGD(model.parameters(), lr=1.0), plan, 4,
                                          torch.Generator().manual_seed(3))
    loss_fn = session.private_loss(nn.CrossEntropyLoss())
    before = model.weight.detach().clone()
    loss_fn(session.wrapped(torch.zeros(4, 50)), torch.zeros(4, dtype=torch.long)).backward()  # zero gradient
    optimizer.step()
    # update = noise / expected batch size, noise ~ N(0, (2.0 * 0.5)^2) per coordinate
    std = float(((model.weight.detach() - before) * 4).std())
    assert std == pytest.approx(1.0, rel=0.1)


def test_ghost_empty_poisson_batch_adds_only_noise():
    results = {}
    for mode in ("hooks", "ghost"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
        session = DPSGDSession(model, mode)
        optimizer = session.private_optimizer(torch.optim.SGD(model.parameters(), lr=1.0),
                                              RoundPlan(1.0, 0.1, 1, 1.0), 4, torch.Generator().manual_seed(0))
        loss_fn = session.private_loss(nn.CrossEntropyLoss())
        before = [p.detach().clone() for p in model.parameters()]
        loss_fn(session.wrapped(torch.zeros(0, 1, 8, 8)), torch.zeros(0, dtype=torch.long)).backward()
        optimizer.step()
        results[mode] = [p.detach() - b for p, b in zip(model.parameters(), before)]
    for h, g in zip(results["hooks"], results["ghost"]):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        assert torch.allclose(h, g)  # same noise generator seed: same noise


def test_per_sample_loss_reduces_non_batch_dimensions():
    loss = PerSampleLoss(nn.CrossEntropyLoss())
    logits, target = torch.randn(3, 2, 4, 4), torch.randint(0, 2, (3, 4, 4))
    assert loss(logits, target) == pytest.approx(float(nn.functional.cross_entropy(logits, target)))
    loss.reduction = "none"
    per_example = loss(logits, target)
    assert per_example.shape == (3,)
    assert torch.allclose(per_example, nn.functional.cross_entropy(logits, target, reduction="none").mean((1, 2)))
    assert loss.loss_fn.reduction == "mean"  # the wrapped loss is left as it was


def test_private_loss_is_the_loss_itself_outside_ghost_mode():
    session = DPSGDSession(nn.Linear(2, 2), "hooks")
    loss_fn = nn.CrossEntropyLoss()
    assert session.private_loss(loss_fn) is loss_fn
    with pytest.raises(RuntimeError, match="private_optimizer"):
        DPSGDSession(nn.Linear(2, 2), "ghost").private_loss(loss_fn)


def test_ghost_state_keeps_inner_names():
    model = nn.Sequential(nn.Linear(3, 2))
    session = DPSGDSession(model, "ghost")
    assert set(model.state_dict()) == {"0.weight", "0.bias"}
    assert session.model is model

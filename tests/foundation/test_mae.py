"""Masked autoencoder: patch order, per-sample loss, opacus per-sample gradients against a
per-example loop (2D and 3D), a real opacus DP-SGD step, and encoder extraction into ViT / UNETR."""

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ai4hi_sdk.foundation.architectures import BackboneClassifier, build_unetr
from ai4hi_sdk.foundation.mae import MAELoss, build_mae, encoder_state, patchify

SHAPES = {"vit-micro-2d": (1, 32, 32), "vit-micro-3d": (1, 32, 32, 32)}


def _mae(backbone="vit-micro-2d", **kw):
    torch.manual_seed(0)
    return build_mae(backbone, **kw)


def _fix_masks(model, keep: torch.Tensor) -> None:
    """Make the MAE keep the given token indices ``[B, K]`` (rows picked by the batch's ``ids``)."""
    def masking(x, masking_ratio=None):
        rows = model.current_ids
        idx = keep[rows]
        mask = torch.ones(x.shape[0], x.shape[1], dtype=torch.int)
        mask[torch.arange(x.shape[0]).unsqueeze(1), idx] = 0
        return x[torch.arange(x.shape[0]).unsqueeze(1), idx], idx, mask

    model._masking = masking


@pytest.mark.parametrize("backbone", list(SHAPES))
def test_patchify_follows_the_patch_embedding_token_order(backbone):
    from monai.networks.blocks.patchembedding import PatchEmbeddingBlock

    p = 4 if backbone.endswith("2d") else 8
    dims = len(SHAPES[backbone]) - 1
    size = 16
    embed = PatchEmbeddingBlock(in_channels=1, img_size=size, patch_size=p, hidden_size=p ** dims, num_heads=1,
                                proj_type="conv", pos_embed_type="none", spatial_dims=dims)
    with torch.no_grad():  # conv weight = identity over the patch's pixels: token n = patch n, flattened
        embed.patch_embeddings.weight.copy_(torch.eye(p ** dims).reshape(p ** dims, 1, *([p] * dims)))
        embed.patch_embeddings.bias.zero_()
    x = torch.randn(2, 1, *([size] * dims))
    assert torch.allclose(patchify(x, p), embed(x), atol=1e-6)


def test_loss_is_per_sample_and_counts_only_masked_patches():
    loss = MAELoss(patch_size=4, norm_pix=False, reduction="none")
    images = torch.randn(3, 1, 8, 8)
    target = patchify(images, 4)
    pred = target.clone()
    mask = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]])
    pred[0, 1] += 5.0  # a visible patch: not counted
    pred[1, 2] += 2.0  # masked: error 4 on one of two masked patches -> 2
    out = loss(pred, mask, images)
    assert torch.allclose(out, torch.tensor([0.0, 2.0, 0.0]))
    loss.reduction = "mean"
    assert torch.isclose(loss(pred, mask, images), out.mean())


@pytest.mark.parametrize("backbone", list(SHAPES))
def test_opacus_per_sample_gradients_match_a_per_example_loop(backbone):
    from opacus import GradSampleModule

    model = _mae(backbone)
    shape = SHAPES[backbone]
    n_tokens = model.patch_embedding.n_patches
    batch = 3
    gen = torch.Generator().manual_seed(1)
    keep = torch.stack([torch.randperm(n_tokens, generator=gen)[: n_tokens // 4] for _ in range(batch)])
    images = torch.randn(batch, *shape, generator=gen)
    reference = copy.deepcopy(model)
    _fix_masks(model, keep)
    _fix_masks(reference, keep)
    loss_fn = MAELoss(model.patch_size[0])

    wrapped = GradSampleModule(model)
    model.current_ids = torch.arange(batch)
    loss_fn(*wrapped(images), images).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(getattr(p, "grad_sample", None) is not None for p in trainable.values())
    ref = dict(reference.named_parameters())
    for i in range(batch):
        reference.zero_grad()
        reference.current_ids = torch.tensor([i])
        loss_fn(*reference(images[i:i + 1]), images[i:i + 1]).backward()
        for name, param in trainable.items():
            assert torch.allclose(param.grad_sample[i], ref[name].grad, atol=1e-5, rtol=1e-4), name


def test_frozen_parts_are_the_ones_opacus_cannot_handle():
    model = _mae()
    assert {"cls_token", "mask_tokens"} <= set(model.frozen_parameters)
    assert all(n in ("cls_token", "mask_tokens") or "norm_cross_attn" in n for n in model.frozen_parameters)
    assert not model.patch_embedding.position_embeddings.requires_grad


def _dp_step(model):
    from opacus import PrivacyEngine

    images = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    loader = DataLoader(TensorDataset(images), batch_size=8)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    engine = PrivacyEngine()
    private, optimizer, loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                     noise_multiplier=1.0, max_grad_norm=1.0,
                                                     noise_generator=torch.Generator().manual_seed(3))
    loss_fn = MAELoss(4)
    for (batch,) in loader:
        if len(batch):
            optimizer.zero_grad()
            loss_fn(*private(batch), batch).backward()
            optimizer.step()
            break
    return engine


def test_real_opacus_dp_sgd_step_trains_and_leaves_frozen_parts():
    model = _mae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = _dp_step(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert engine.get_epsilon(1e-5) > 0


def test_without_freezing_opacus_cannot_train_the_mae():
    model = _mae()
    for param in (model.cls_token, model.mask_tokens):
        param.requires_grad_(True)
    # opacus falls back to functorch (vmap) over the whole MAE, which refuses its random masking
    with pytest.raises(RuntimeError, match="random"):
        _dp_step(model)


def test_encoder_state_loads_into_the_vit_and_computes_the_same_encoding():
    mae = _mae()
    with torch.no_grad():  # make the final norm non-trivial so a wrong mapping would show
        mae.blocks[-1].weight.uniform_(0.5, 1.5)
    classifier = BackboneClassifier("vit-micro-2d")
    classifier.encoder.load_state_dict(encoder_state(mae.state_dict(), num_layers=3), strict=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        tokens = mae.patch_embedding(x)
        expected = mae.blocks(tokens)  # MAE: blocks + final LayerNorm in one sequence
        got, _ = classifier.encoder(x)
    assert torch.allclose(got, expected, atol=1e-5)


def test_unetr_takes_the_encoder_of_a_3d_mae():
    mae = _mae("vit-unetr-micro-3d")
    state = encoder_state(mae.state_dict(), num_layers=12)
    model = build_unetr("vit-unetr-micro-3d", out_channels=2, feature_size=8)
    model.vit.load_state_dict(state, strict=True)
    assert torch.equal(model.vit.blocks[5].mlp.linear1.weight, mae.blocks[5].mlp.linear1.weight)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)

"""Contrastive image-report model: the loss against a hand-written InfoNCE, zero-shot scoring from
prompts, and a few seeded training steps on synthetic image-report pairs that lift the zero-shot
AUROC from chance without any hand label."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.contrastive import (OPACITY_PROMPTS, ContrastiveLoss, ImageReportModel, image_backbone_state,
                                              info_nce, zero_shot_scores)
from ai4hi_sdk.foundation.text import normalize_report_text, split_sentences


def _reference_info_nce(images, texts, scale, image_weight):
    """InfoNCE written out with the math module: -log softmax of the matching pair, both ways."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    images, texts = [unit(v) for v in images], [unit(v) for v in texts]
    b = len(images)
    sim = [[scale * sum(a * c for a, c in zip(images[i], texts[j])) for j in range(b)] for i in range(b)]
    i2t = -sum(sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(b))) for i in range(b)) / b
    t2i = -sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(b))) for j in range(b)) / b
    return image_weight * i2t + (1 - image_weight) * t2i


@pytest.mark.parametrize("image_weight", [0.5, 0.75])
def test_loss_equals_a_hand_written_info_nce(image_weight):
    gen = torch.Generator().manual_seed(3)
    images, texts = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    log_scale = torch.tensor(math.log(1 / 0.2))
    got = ContrastiveLoss(image_weight)(images, texts, log_scale)
    want = _reference_info_nce(images.tolist(), texts.tolist(), 5.0, image_weight)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_loss_properties():
    gen = torch.Generator().manual_seed(4)
    images, texts = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    # the two directions swap with the inputs
    assert float(info_nce(images, texts, 2.0, image_weight=0.75)) == pytest.approx(
        float(info_nce(texts, images, 2.0, image_weight=0.25)), rel=1e-6)
    # matching pairs aligned -> lower loss than random pairs; the scale is capped at 100
    assert float(info_nce(images, images, 3.0)) < float(info_nce(images, texts, 3.0))
    assert float(info_nce(images, texts, 50.0)) == pytest.approx(float(info_nce(images, texts, math.log(100))))
    empty = torch.zeros(0, 8, requires_grad=True)
    assert float(info_nce(empty, empty, 1.0)) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        info_nce(images, texts[:3], 1.0)


def test_zero_shot_scores_are_class_probabilities_from_prompt_ensembles():
    torch.manual_seed(0)
    model = ImageReportModel("resnet-micro-2d", embed_dim=16, text_width=32, text_layers=1, max_len=64)
    images = torch.rand(5, 1, 32, 32)
    scores = zero_shot_scores(model, images, OPACITY_PROMPTS, batch_size=2)
    assert scores.shape == (5, 2) and torch.allclose(scores.sum(1), torch.ones(5))
    # a class of several prompts is the normalised mean of their normalised embeddings
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.encode_prompts(list(OPACITY_PROMPTS[1])), dim=-1)
        single = zero_shot_scores(model, images, [OPACITY_PROMPTS[0], "x"])
    assert not torch.allclose(single, scores)
    assert emb.shape == (2, 16)
    with pytest.raises(UserError, match="at least two classes"):
        zero_shot_scores(model, images, ["only one"])
    with pytest.raises(UserError, match="class 1"):
        zero_shot_scores(model, images, ["a", []])


def _pairs(n: int, seed: int):
    """Synthetic radiographs (opacity in half of them) with their templated reports, in memory."""
    from ai4hi_sdk.data.report_synth import synthetic_report
    from ai4hi_sdk.data.synth import chest_radiograph_with_placement
    from ai4hi_sdk.data.transforms import preprocess_transforms

    pre = preprocess_transforms(32)
    images, texts, labels = [], [], []
    for i in range(n):
        image, placement = chest_radiograph_with_placement(np.random.default_rng([seed, i]), size=64,
                                                           positive=bool(i % 2))
        report = synthetic_report(np.random.default_rng([seed, i, 1]), placement)
        images.append(pre(image[None].astype(np.float32)))
        texts.append(f"FINDINGS: {report.findings}\nIMPRESSION: {report.impression}")
        labels.append(i % 2)
    return torch.stack(images), texts, np.array(labels)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared CPU more threads oversubscribe it (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_few_steps_on_image_report_pairs_lift_zero_shot_auroc_above_chance(one_thread):
    """No hand label is used: the labels only score the prompts' output at the end."""
    train_images, train_texts, _ = _pairs(96, seed=0)
    test_images, _, test_labels = _pairs(80, seed=1)
    torch.manual_seed(0)
    model = ImageReportModel("resnet-micro-2d", embed_dim=32, text_width=32, text_layers=1, max_len=288)
    before = roc_auc_score(test_labels, zero_shot_scores(model, test_images, OPACITY_PROMPTS)[:, 1].numpy())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(60):
        idx = rng.choice(len(train_images), 16, replace=False)
        views = [normalize_report_text(train_texts[i] if rng.random() < 0.5 else
                                       rng.choice(split_sentences(train_texts[i]))) for i in idx]
        model.train()
        loss = info_nce(*model(train_images[idx], model.tokenizer.encode_batch(views)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = roc_auc_score(test_labels, zero_shot_scores(model, test_images, OPACITY_PROMPTS)[:, 1].numpy())
    assert after >= 0.8, (before, after)
    assert after > before + 0.15


def test_image_backbone_state_is_the_image_encoder():
    torch.manual_seed(0)
    model = ImageReportModel("vit-micro-2d", embed_dim=16, text_width=32, text_layers=1, max_len=64)
    state = image_backbone_state(model)
    assert set(state) == set(model.image.encoder.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.image.encoder.state_dict().items())
    with pytest.raises(UserError, match="not an image-report model"):
        image_backbone_state({"head.weight": torch.zeros(1)})

"""``ImageReportTrainer``: image-report contrastive pretraining at a site (``SiteTrainer`` hooks only).

Each image of the site's training split is paired with its study's report
(:mod:`~ai4hi_sdk.foundation.report_pairs`); an image encoder (a foundation backbone) and a byte-level
text encoder trained from scratch (:mod:`~ai4hi_sdk.foundation.text`) learn a joint space with the
symmetric InfoNCE loss (:mod:`~ai4hi_sdk.foundation.contrastive`). Afterwards the pair classifies
images from text prompts (:func:`~ai4hi_sdk.foundation.contrastive.zero_shot_scores`) and the image
encoder is a backbone for the adaptation modes (:meth:`ImageReportTrainer.export_backbone`).

**Privacy: client-level DP and secure aggregation, never DP-SGD.** The contrastive loss couples the
studies of a batch (each is a negative for the others), so clipping per-example gradients does not
bound one patient's influence. The trainer runs only for a job with ``method: image_report``, which
the job spec accepts only with ``privacy.client_dp`` and without ``privacy.dp_sgd``; a site whose
policy requires patient-level DP refuses such a job (site gate). What leaves a site is the round's
update (under secure aggregation, only the sum over sites) and the declared aggregate metrics below;
report text, tokens and per-study embeddings never do, and :attr:`metric_names` cannot be widened
by a subclass.

Job spec ``model:`` keys (all optional):

``backbone``            image backbone preset or mapping (default ``vit-micro-2d``; 2D;
                        ``data.image_size`` must equal a ViT's ``img_size``). A BatchNorm backbone
                        (ResNet) is refused when ``client_dp.noise_multiplier > 0``: the noise would
                        land on its running variances
``pool``                ``mean`` (default) or ``max`` over a ViT's tokens
``embed_dim``           joint space width (64)
``text_width``, ``text_layers``, ``text_heads``, ``text_stride``: the text encoder (64, 2, 4, 2)
``max_len``             report bytes read, specials included (320; the rest is cut)
``temperature``         initial softmax temperature (0.07), learned unless ``learn_temperature: false``
``image_weight``        weight of the image->report direction of the loss (0.5; ConVIRT: 0.75)
``sentence_prob``       chance a training view is one random sentence of the report (0.5)

Images come from the job's ``data:`` block (modalities, SOP classes, image types), single-frame
greyscale only; ``train.augment`` adds small rotations, shifts, zooms and noise, never a left-right
flip (the report says which side).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.trainers import DEFAULT_BACKBONE, _backbone, _check_keys
from ai4hi_sdk.trainers.site_trainer import SiteTrainer

IMAGE_REPORT_KEYS = frozenset({"backbone", "pool", "embed_dim", "text_width", "text_layers", "text_heads",
                               "text_stride", "max_len", "temperature", "learn_temperature", "image_weight",
                               "sentence_prob"})
#: every metric an image-report trainer may declare: aggregates over the validation split
AGGREGATE_METRICS = frozenset({"loss", "top1_image_to_report", "top1_report_to_image"})
METHOD = "image_report"


class ImageReportTrainer(SiteTrainer):
    """Contrastive pretraining of an image encoder and a text encoder on a site's image-report pairs.

    Batches are ``(images [B, 1, S, S] float32, ids [B, max_len] int64)``. Validation metrics
    (:attr:`metric_names`, aggregates over the validation split only):

    * ``loss``: the contrastive loss over the validation split in fixed batches of ``train.batch_size``;
    * ``top1_image_to_report`` / ``top1_report_to_image``: share of validation images whose own
      report is the most similar of all validation reports, and the reverse (chance: 1 / n).

    A subclass may declare fewer metrics, never others (:data:`AGGREGATE_METRICS`), so no per-study
    name can be declared, and an undeclared name returned by ``evaluate`` stops the round. (What
    value a declared name carries is the trainer code's: a site runs the trainer code the job ships,
    so it reviews custom code as it would any model code.)
    """

    metric_names: ClassVar[tuple[str, ...]] = ("loss", "top1_image_to_report", "top1_report_to_image")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        extra = sorted(set(cls.metric_names) - AGGREGATE_METRICS)
        if extra:
            raise TypeError(f"{cls.__name__} declares metrics {extra}: an image-report trainer may send only the "
                            f"aggregates {sorted(AGGREGATE_METRICS)} (nothing per study or per report)")

    # ------------------------------------------------------------------ hooks
    def build_model(self) -> nn.Module:
        from ai4hi_sdk.foundation.contrastive import ImageReportModel

        if self.spec.method != METHOD:
            raise UserError(f"{type(self).__name__} trains image-report pairs with a contrastive loss: the job must say "
                            f"method: {METHOD} (so that it runs with client-level DP and secure aggregation, never "
                            f"DP-SGD), not method: {self.spec.method}")
        _check_keys(self.spec, IMAGE_REPORT_KEYS, type(self).__name__)
        model = self.spec.model
        config = _backbone(self.spec)
        client_dp = self.spec.privacy.client_dp
        if config["family"] == "resnet" and client_dp is not None and client_dp.noise_multiplier > 0:
            # the round's noise lands on every exchanged tensor, running variances included
            raise UserError(f"backbone {model.get('backbone')!r} has BatchNorm: with client-level DP noise its running "
                            "variances would be noised and can turn negative (a NaN model); use a ViT backbone "
                            f"(e.g. {DEFAULT_BACKBONE}) for image-report pretraining")
        try:
            return ImageReportModel(
                config, pool=str(model.get("pool", "mean")), embed_dim=int(model.get("embed_dim", 64)),
                text_width=int(model.get("text_width", 64)), text_layers=int(model.get("text_layers", 2)),
                text_heads=int(model.get("text_heads", 4)), text_stride=int(model.get("text_stride", 2)),
                max_len=int(model.get("max_len", 320)), temperature=float(model.get("temperature", 0.07)),
                learn_temperature=bool(model.get("learn_temperature", True)))
        except ValueError as err:
            raise UserError(f"model: {err}") from err

    def build_datasets(self) -> Any:
        from ai4hi_sdk.data.selection import ImageSelection
        from ai4hi_sdk.foundation.report_pairs import load_image_report_pairs
        from ai4hi_sdk.foundation.text import ByteTokenizer

        _backbone(self.spec)
        try:
            tokenizer = ByteTokenizer(int(self.spec.model.get("max_len", 320)))
        except ValueError as err:
            raise UserError(f"model.max_len: {err}") from err
        if self.site_dir is None:
            raise UserError("this trainer has no site data folder")
        return load_image_report_pairs(self.site_dir, image_size=self.spec.data.image_size, tokenizer=tokenizer,
                                       selection=ImageSelection.from_spec(self.spec.data),
                                       augment=self.spec.train.augment,
                                       sentence_prob=float(self.spec.model.get("sentence_prob", 0.5)))

    def build_loss(self) -> nn.Module:
        from ai4hi_sdk.foundation.contrastive import ContrastiveLoss

        return ContrastiveLoss(float(self.spec.model.get("image_weight", 0.5)))

    def train_step(self, model: nn.Module, batch: Any, loss_fn: nn.Module) -> torch.Tensor:
        images, ids = self.to_device(batch)
        return loss_fn(*model(images, ids))

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        from ai4hi_sdk.foundation.contrastive import info_nce

        weight = float(self.spec.model.get("image_weight", 0.5))
        images_emb, texts_emb = [], []
        total, count = 0.0, 0
        for images, ids in self.loader(dataset, shuffle=False):
            with self.autocast():
                image_emb, text_emb, scale = model(self.to_device(images), self.to_device(ids))
            total += float(info_nce(image_emb, text_emb, scale, image_weight=weight)) * images.shape[0]
            count += images.shape[0]
            images_emb.append(nn.functional.normalize(image_emb.float(), dim=-1))
            texts_emb.append(nn.functional.normalize(text_emb.float(), dim=-1))
        if not count:
            return {}
        # per-study similarities exist only here, in memory; only their aggregates are returned
        image_all, text_all = torch.cat(images_emb), torch.cat(texts_emb)
        return {"loss": total / count, "top1_image_to_report": _top1(image_all, text_all),
                "top1_report_to_image": _top1(text_all, image_all)}

    # ------------------------------------------------------------------ loader, exchange, export
    def loader(self, dataset: Dataset, *, shuffle: bool, seed: int = 0) -> torch.utils.data.DataLoader:
        """As the base, but a shuffled (training) loader drops a last batch of one pair: its
        contrastive loss is 0 (no negatives), a step that only costs time."""
        base = super().loader(dataset, shuffle=shuffle, seed=seed)
        size = len(dataset)  # type: ignore[arg-type]
        if shuffle and size % self.spec.train.batch_size == 1 and size > 1:
            return torch.utils.data.DataLoader(dataset, batch_size=base.batch_size, shuffle=True,
                                               generator=base.generator, num_workers=0, drop_last=True,
                                               pin_memory=base.pin_memory)
        return base

    def exchanged_names(self) -> list[str]:
        """State-dict names a round exchanges: every floating-point entry except frozen parameters
        (a ViT's sin-cos positions, unused cross-attention norms; the temperature when fixed).
        BatchNorm running statistics (a ResNet backbone) are included: they are part of the model
        the consortium pretrains."""
        frozen = {name for name, param in self.model.named_parameters() if not param.requires_grad}
        return [name for name, tensor in self.model.state_dict().items()
                if tensor.is_floating_point() and name not in frozen]

    def predict_test(self, global_state: Any) -> Any:
        raise UserError("image-report pretraining has no test-split predictions: validate a model adapted from its "
                        "backbone (export_backbone, then BackboneClassificationTrainer)")

    def export_backbone(self, state: Any, out_dir: str | Path, *, overwrite: bool = False, **card_fields: Any) -> Any:
        """Write the image encoder of ``state`` (the model's exchanged state, e.g. the final global
        one, loaded into :attr:`model`; or a model) as a backbone folder with its card; ``card_fields`` as
        :func:`~ai4hi_sdk.foundation.provenance.backbone_card`'s (``site_images``, ``rounds``,
        ``local_epochs``, ``job_id``, ...). Pass ``client_dp`` (e.g. ``{"clip", "noise_multiplier",
        "epsilon", "delta"}``) only for rounds that applied it: the card states what was done, not
        what the spec asked for (local :meth:`fit` adds no noise). Load the folder with
        ``BackboneClassificationTrainer`` (``model: {backbone: <same>, checkpoint: <out_dir>,
        checkpoint_sha256: <sha256>, pool: <same>}``)."""
        from ai4hi_sdk.foundation.contrastive import export_image_backbone
        from ai4hi_sdk.trainers.state import load_exchanged_state

        if not isinstance(state, nn.Module):
            # the exchanged tensors onto the seeded model: what does not travel (frozen position
            # embeddings) is the seeded value every site and the server share
            load_exchanged_state(self.model, state, self.exchanged_names())
            state = self.model
        return export_image_backbone(state, self.spec.model.get("backbone", DEFAULT_BACKBONE), out_dir,
                                     pool=str(self.spec.model.get("pool", "mean")), overwrite=overwrite, **card_fields)


def _top1(queries: torch.Tensor, keys: torch.Tensor, chunk: int = 1024) -> float:
    """Share of rows ``i`` of ``queries`` [N, E] whose most similar row of ``keys`` [N, E] is ``i``
    (cosine on unit vectors; computed in chunks, so memory stays at ``chunk x N``)."""
    hits = 0
    for start in range(0, queries.shape[0], chunk):
        best = (queries[start:start + chunk] @ keys.T).argmax(1)
        hits += int((best == torch.arange(start, start + best.shape[0], device=best.device)).sum())
    return hits / queries.shape[0]

"""ImageReportTrainer on real synthetic DICOM sites with reports (reports.csv rows and SR objects):
pairs come from the train split with each study's own report, test-split studies are never read,
a missing report is counted; fit runs with client-level DP in the spec; only declared aggregate
metrics exist (a subclass cannot declare a per-study one, nor return one); the image encoder
exports as a verified backbone that BackboneClassificationTrainer adapts."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.reports import load_site_reports
from ai4hi_sdk.data.scan import scan_directory
from ai4hi_sdk.data.splits import assign_split
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.image_report import AGGREGATE_METRICS, ImageReportTrainer
from ai4hi_sdk.foundation.text import normalize_report_text

TRAIN = {"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 3e-3, "optimizer": "adam", "threads": 1,
         "augment": True}
PRIVACY = {"client_dp": {"clip": 1.0, "noise_multiplier": 0.8}, "secure_aggregation": {}}
SMALL = {"backbone": "vit-micro-2d", "embed_dim": 16, "text_width": 32, "text_layers": 1, "max_len": 288}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    path = tmp_path_factory.mktemp("ir") / "hospital-1"
    synth_site(path, site_index=0, n_studies=36, seed=5, reports=True)
    return path


def _spec(model: dict | None = None, **overrides) -> JobSpec:
    body = {"name": "ir", "method": "image_report", "trainer": "ai4hi_sdk.foundation.image_report:ImageReportTrainer",
            "model": SMALL if model is None else model, "data": {"image_size": 32}, "train": TRAIN,
            "privacy": PRIVACY, "min_sites": 3, **overrides}
    return JobSpec.model_validate(body)


def _trainer(site, spec=None, cls=ImageReportTrainer):
    return cls(spec or _spec(), site_dir=site, site_name="hospital-1", device="cpu")


def test_pairs_are_train_split_images_with_their_own_report(site):
    trainer = _trainer(site, _spec({**SMALL, "sentence_prob": 0.0}))
    data = trainer.datasets
    scan = scan_directory(site / "dicom")
    study_of = {r.sop_instance_uid: r.study_instance_uid for r in scan.instances}
    splits = [assign_split(r.study_instance_uid) for r in scan.instances]
    assert data.counts() == {"train": splits.count("train"), "val": splits.count("val"),
                             "test_excluded": splits.count("test"), "without_report": 0}
    assert data.report_coverage["from_sr"] > 0 and data.report_coverage["from_csv"] > 0
    join = load_site_reports(site, scan)
    for dataset, split in ((data.train, "train"), (data.val, "val")):
        for index, uid in enumerate(dataset.sop_instance_uids):
            assert assign_split(study_of[uid]) == split
            image, ids = dataset[index]
            want = normalize_report_text(join.text(study_of[uid]))
            assert trainer.model.tokenizer.decode(ids) == want[:286]
            assert image.shape == (1, 32, 32) and ids.shape == (288,) and ids.dtype == torch.int64


def test_training_views_are_sentences_of_the_own_report_and_never_flipped(site):
    from monai.transforms import RandFlip

    from ai4hi_sdk.data.transforms import augment_transforms
    from ai4hi_sdk.foundation.text import split_sentences

    trainer = _trainer(site, _spec({**SMALL, "sentence_prob": 1.0}))
    data = trainer.datasets
    data.train.set_random_state(1)
    study_of = {r.sop_instance_uid: r.study_instance_uid for r in scan_directory(site / "dicom").instances}
    join = load_site_reports(site)
    seen = set()
    for index, uid in enumerate(data.train.sop_instance_uids):
        _, ids = data.train[index]
        sentence = trainer.model.tokenizer.decode(ids)
        assert sentence in [normalize_report_text(x) for x in split_sentences(join.text(study_of[uid]))]
        seen.add(sentence)
    assert len(seen) > 5
    assert not any(isinstance(t, RandFlip) for t in augment_transforms(32, flip=False).transforms)
    assert any(isinstance(t, RandFlip) for t in augment_transforms(32).transforms)


def test_a_study_without_report_is_counted_not_fatal(site, tmp_path):
    import shutil

    copy = tmp_path / "hospital-1"
    shutil.copytree(site, copy)
    rows = list(csv.reader(open(copy / "reports.csv", newline="")))
    scan = scan_directory(copy / "dicom")
    train_studies = {r.study_instance_uid for r in scan.instances if assign_split(r.study_instance_uid) == "train"}
    dropped = [row for row in rows[1:] if row[0] in train_studies][:2]
    with open(copy / "reports.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([row for row in rows if row not in dropped])
    full = _trainer(site).datasets.counts()
    counts = _trainer(copy).datasets.counts()
    assert counts["without_report"] == 2 and counts["train"] == full["train"] - 2


def test_no_report_at_all_is_a_clear_error(site, tmp_path):
    import shutil

    copy = tmp_path / "hospital-1"
    shutil.copytree(site, copy, ignore=shutil.ignore_patterns("report-*.dcm", "reports.csv"))
    with pytest.raises(UserError, match="no training-split image has a report"):
        _trainer(copy).datasets


def test_fit_runs_with_client_level_dp_and_sends_only_declared_aggregates(site):
    trainer = _trainer(site)
    state = trainer.initial_state()
    update = trainer.fit(state, 0)
    assert set(update.metrics) <= ImageReportTrainer.declared_metrics()
    assert not any(k.startswith("dp_") for k in update.metrics)  # fit accounts nothing for client-level DP
    assert {"val_loss", "val_top1_image_to_report", "val_top1_report_to_image", "train_loss"} <= set(update.metrics)
    assert set(update.delta) == set(state) and any(torch.count_nonzero(d) for d in update.delta.values())
    assert update.num_samples == len(trainer.datasets.train)
    # nothing of a report or a study in the metrics: names and numbers only
    text = json.dumps(update.metrics)
    join = load_site_reports(site)
    for study in join.reports:
        assert study not in text
        for sentence in normalize_report_text(join.text(study)).split(". "):
            assert sentence[:20] not in text.lower()


def test_evaluate_returns_exactly_the_declared_aggregates(site):
    trainer = _trainer(site)
    model = trainer.model.eval()
    with torch.no_grad():
        metrics = trainer.evaluate(model, trainer.datasets.val)
    assert set(metrics) == set(ImageReportTrainer.metric_names) == AGGREGATE_METRICS
    assert all(type(v) is float for v in metrics.values())
    n = len(trainer.datasets.val)
    for name in ("top1_image_to_report", "top1_report_to_image"):
        assert 0.0 <= metrics[name] <= 1.0 and (metrics[name] * n) == pytest.approx(round(metrics[name] * n))


def test_a_trainer_cannot_declare_a_per_study_metric():
    with pytest.raises(TypeError, match=r"declares metrics \['similarity_study_1'\]"):
        class PerStudy(ImageReportTrainer):  # noqa: F841
            metric_names = ("loss", "similarity_study_1")

    class Fewer(ImageReportTrainer):  # declaring fewer aggregates is fine
        metric_names = ("loss",)

    assert Fewer.metric_names == ("loss",)


def test_a_trainer_returning_an_undeclared_metric_is_stopped(site):
    class Cheater(ImageReportTrainer):
        def evaluate(self, model, dataset):
            out = super().evaluate(model, dataset)
            out["first_study_similarity"] = 0.42  # a per-study value, not declared
            return out

    trainer = _trainer(site, cls=Cheater)
    with pytest.raises(ValueError, match="undeclared metrics"):
        trainer.validate(trainer.initial_state())


def test_the_trainer_needs_method_image_report(site):
    spec = _spec(privacy={}, method="supervised")
    with pytest.raises(UserError, match="must say method: image_report"):
        _trainer(site, spec).initial_state()
    with pytest.raises(UserError, match=r"unknown keys \['maxlen'\]"):
        _trainer(site, _spec({**SMALL, "maxlen": 9})).initial_state()
    with pytest.raises(UserError, match="no test-split predictions"):
        _trainer(site).predict_test({})


def test_exchanged_names_leave_out_frozen_parts_and_keep_batchnorm_statistics(site):
    vit = _trainer(site, _spec({**SMALL, "learn_temperature": False}))
    names = set(vit.exchanged_names())
    assert "image.encoder.patch_embedding.position_embeddings" in vit.model.state_dict()
    assert "image.encoder.patch_embedding.position_embeddings" not in names
    assert set(vit.initial_state()) == names  # only what travels
    assert "logit_scale" not in names and "text.embed.weight" in names and "text_proj.weight" in names
    assert "logit_scale" in _trainer(site).exchanged_names()
    no_noise = {"client_dp": {"clip": 1.0, "noise_multiplier": 0.0}, "secure_aggregation": {}}
    resnet = _trainer(site, _spec({**SMALL, "backbone": "resnet-micro-2d"}, privacy=no_noise))
    names = set(resnet.exchanged_names())
    assert "image.encoder.bn1.running_mean" in names and "image.encoder.bn1.running_var" in names
    assert names == set(resnet.initial_state())


def test_a_batchnorm_backbone_is_refused_under_client_level_noise(site):
    """Noise on every exchanged tensor would reach the running variances (negative -> NaN model)."""
    with pytest.raises(UserError, match="BatchNorm: with client-level DP noise"):
        _trainer(site, _spec({**SMALL, "backbone": "resnet-micro-2d"})).initial_state()


def test_exported_backbone_loads_into_the_adaptation_trainer(site, tmp_path):
    from ai4hi_sdk.foundation.checkpoint import sha256_file
    from ai4hi_sdk.foundation.trainers import BackboneClassificationTrainer

    trainer = _trainer(site)
    state = trainer.initial_state()
    update = trainer.fit(state, 0)
    state = {k: state[k] + update.delta[k] for k in state}
    out = tmp_path / "backbone"
    # the card states the privacy the rounds applied, not what the spec asked for: local fit added no noise
    local = trainer.export_backbone(state, tmp_path / "local", site_images={"hospital-1": update.num_samples},
                                    rounds=1, local_epochs=1)
    assert local.card["client_level_dp"] is None
    assert "not differentially private" in (tmp_path / "local" / "BACKBONE_CARD.md").read_text()
    provenance = trainer.export_backbone(state, out, site_images={"hospital-1": update.num_samples}, rounds=1,
                                         local_epochs=1, client_dp={"clip": 1.0, "noise_multiplier": 0.8})
    assert provenance.card["client_level_dp"] == {"clip": 1.0, "noise_multiplier": 0.8}
    assert "image-report contrastive" in provenance.card["method"]
    assert "client-level DP" in (out / "BACKBONE_CARD.md").read_text()
    assert local.sha256 == provenance.sha256  # the same weights
    spec = JobSpec.model_validate({
        "name": "probe", "trainer": "ai4hi_sdk.foundation.trainers:BackboneClassificationTrainer",
        "model": {"backbone": "vit-micro-2d", "checkpoint": str(out),
                  "checkpoint_sha256": sha256_file(out / "backbone.safetensors"), "adaptation": "linear_probe"},
        "data": {"image_size": 32}, "train": TRAIN})
    probe = BackboneClassificationTrainer(spec, site_dir=site, site_name="hospital-1", device="cpu")
    probe_state = probe.model.state_dict()  # the loaded backbone (initial_state holds only what travels)
    for name, tensor in state.items():
        if name.startswith("image.encoder.") and not name.endswith("num_batches_tracked"):
            assert torch.equal(probe_state["encoder." + name[len("image.encoder."):]], tensor), name
    assert set(probe.exchanged_names()) == {"head.weight", "head.bias"}

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ai4hi_sdk.data import dataset as dataset_module
from ai4hi_sdk.data.dataset import (
    ClassificationItem,
    DicomClassificationDataset,
    label_to_int,
    load_site_splits,
)
from ai4hi_sdk.data.scan import scan_directory
from ai4hi_sdk.data.splits import assign_split
from ai4hi_sdk.errors import UserError


@pytest.fixture(scope="module")
def splits(consortium):
    return load_site_splits(consortium / "hospital-1", image_size=32)


def _uids(ds) -> list[str]:
    return [it.sop_instance_uid for it in ds.items]


def test_splits_partition_labelled_images_by_study(splits):
    report = splits.scan
    by_sop = {r.sop_instance_uid: r for r in report.instances}
    seen: set[str] = set()
    for name in ("train", "val", "test"):
        ds = getattr(splits, name)
        uids = _uids(ds)
        assert uids == sorted(uids)  # deterministic order
        for uid in uids:
            assert assign_split(by_sop[uid].study_instance_uid) == name
        assert seen.isdisjoint(uids)
        seen |= set(uids)
    assert seen == set(splits.labels.labels) == set(by_sop)
    assert len(splits.train) > len(splits.val) > 0 and len(splits.test) > 0
    assert splits.counts() == {k: len(getattr(splits, k)) for k in ("train", "val", "test")}
    assert splits.class_names == ["0", "1"]
    assert splits.train.augment and not splits.val.augment and not splits.test.augment


def test_items_and_attributes(splits):
    image, label = splits.val[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert type(image) is torch.Tensor
    assert label.dtype == torch.int64 and label.dim() == 0
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    item = splits.val.items[0]
    assert item.path.is_absolute() and item.path.is_file()
    assert int(label) == item.label == int(splits.labels.labels[item.sop_instance_uid])
    rec = next(r for r in splits.scan.instances if r.sop_instance_uid == item.sop_instance_uid)
    assert splits.val.attributes(0) == {
        "sex": rec.sex, "age_band": rec.age_band, "manufacturer": rec.manufacturer
    }
    assert splits.val.attributes(0)["manufacturer"] == "GE"
    assert splits.val.labels == [it.label for it in splits.val.items]


def test_augmentation_reproducible_and_eval_fixed(splits):
    train = splits.train
    train.set_random_state(11)
    a = [train[i][0] for i in range(3)]
    train.set_random_state(11)
    b = [train[i][0] for i in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    train.set_random_state(12)
    c = [train[i][0] for i in range(3)]
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    assert torch.equal(splits.val[1][0], splits.val[1][0])


def test_each_image_decoded_once(consortium, monkeypatch):
    calls: list[Path] = []
    real = dataset_module.load_pixels

    def counting(path, **kw):
        calls.append(path)
        return real(path, **kw)

    monkeypatch.setattr(dataset_module, "load_pixels", counting)
    s = load_site_splits(consortium / "hospital-3", image_size=16)
    for _ in range(3):
        for i in range(len(s.train)):
            s.train[i]
    assert len(calls) == len(s.train) == len(set(calls))
    # augmentation must not corrupt the cached image
    s.train.set_random_state(0)
    before = s.train._cache[0].clone()
    s.train[0]
    assert torch.equal(s.train._cache[0], before)


def test_unlabelled_images_dropped_and_fallback_layout(consortium, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(consortium / "hospital-2" / "dicom", site)  # no dicom/ subfolder
    lines = (consortium / "hospital-2" / "labels.csv").read_text().splitlines()
    (site / "labels.csv").write_text("\n".join(lines[:11]) + "\n")  # header + 10 studies
    s = load_site_splits(site, image_size=16, augment=False)
    assert sum(s.counts().values()) == 10
    assert s.scan.files_read == 24 and s.scan.files_skipped == 1  # labels.csv itself
    assert len(s.labels.missing_studies) == 14
    assert not s.train.augment


def test_text_labels_with_classes(consortium, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(consortium / "hospital-1" / "dicom", site / "dicom")
    rows = (consortium / "hospital-1" / "labels.csv").read_text().splitlines()[1:]
    names = {"0": "Normal", "1": "pneumonia"}
    text = "StudyInstanceUID,finding\n" + "".join(
        f"{r.split(',')[0]},{names[r.split(',')[1]]}\n" for r in rows
    )
    (site / "labels.csv").write_text(text)
    s = load_site_splits(site, label_column="finding", classes=["normal", "pneumonia"])
    assert s.class_names == ["normal", "pneumonia"]
    ref = load_site_splits(consortium / "hospital-1")
    assert s.train.labels == ref.train.labels
    with pytest.raises(UserError, match="not an integer class"):
        load_site_splits(site, label_column="finding")


def test_site_errors(tmp_path, consortium):
    with pytest.raises(UserError, match="site folder not found"):
        load_site_splits(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="labels.csv"):
        load_site_splits(tmp_path / "empty")
    site = tmp_path / "nolabels"
    shutil.copytree(consortium / "hospital-1" / "dicom", site / "dicom")
    (site / "labels.csv").write_text("StudyInstanceUID,label\n1.2.3,1\n")
    with pytest.raises(UserError, match="no labelled images"):
        load_site_splits(site)


def test_dataset_from_items_sorted(consortium):
    report = scan_directory(consortium / "hospital-1" / "dicom")
    root = consortium / "hospital-1" / "dicom"
    items = [ClassificationItem(root / r.path, i % 2, r.sop_instance_uid)
             for i, r in enumerate(reversed(report.instances))]
    ds = DicomClassificationDataset(items, image_size=8)
    assert _uids(ds) == sorted(r.sop_instance_uid for r in report.instances)
    assert ds.attributes(0) == {"sex": "unknown", "age_band": "unknown", "manufacturer": "unknown"}
    assert ds[0][0].shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("text", "classes", "expected"),
    [("1", None, 1), ("0", None, 0), (" 2 ", None, 2), ("1.0", None, 1), ("Positive", None, 1),
     ("normal", None, 0), ("TRUE", None, 1), ("b", ["a", "B"], 1)],
)
def test_label_to_int(text, classes, expected):
    assert label_to_int(text, classes) == expected


@pytest.mark.parametrize(("text", "classes"), [("-1", None), ("0.5", None), ("maybe", None),
                                               ("c", ["a", "b"])])
def test_label_to_int_rejects(text, classes):
    with pytest.raises(ValueError):
        label_to_int(text, classes)

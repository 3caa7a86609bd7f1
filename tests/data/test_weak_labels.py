"""Weak labels from reports: the uncertain policies, agreement with hand labels (against
scikit-learn's kappa), and the classification dataset of a site trained on weak labels."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from ai4hi_sdk.data.dataset import load_site_splits
from ai4hi_sdk.data.labeler import NEGEX_1
from ai4hi_sdk.data.reports import Report, ReportJoin
from ai4hi_sdk.data.synth import SYNTHETIC_REPORT_TRUTH, synth_site
from ai4hi_sdk.data.weak_labels import label_agreement, weak_labels
from ai4hi_sdk.errors import UserError

REPORTS = {"s1": "Round opacity in the right upper zone.", "s2": "No focal opacity.",
           "s3": "Possible opacity in the left lower zone.", "s4": "The lungs are clear."}


def _join(texts: dict[str, str], missing: tuple[str, ...] = ()) -> ReportJoin:
    return ReportJoin(reports={k: Report("", "", v, "test") for k, v in texts.items()}, n_studies=len(texts) + len(missing),
                      missing_studies=list(missing), empty_studies=[], duplicate_studies=[], extra_keys=[], sources={},
                      problems=[])


@pytest.mark.parametrize(("policy", "expected", "dropped"), [
    ("ignore", {"s1": 1, "s2": 0, "s4": 0}, ["s3"]),
    ("positive", {"s1": 1, "s2": 0, "s3": 1, "s4": 0}, []),
    ("negative", {"s1": 1, "s2": 0, "s3": 0, "s4": 0}, []),
])
def test_uncertain_policy(policy, expected, dropped):
    weak = weak_labels(_join(REPORTS, missing=("s5",)), NEGEX_1, "opacity", policy)
    assert weak.labels == expected and weak.dropped_uncertain == dropped
    assert weak.no_report == ["s5"]  # no report: no label, whatever the policy
    assert dict(weak.assertions) == {"positive": 1, "negative": 1, "uncertain": 1, "unmentioned": 1}
    assert weak.summary()["labelled_studies"] == len(expected)


def test_unknown_finding_is_refused():
    with pytest.raises(ValueError, match="effusion"):  # the message lists what the rules label
        weak_labels(_join(REPORTS), NEGEX_1, "tumour")


@pytest.mark.parametrize("seed", range(5))
def test_agreement_and_kappa_match_scikit_learn(seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    keys = [f"s{i}" for i in range(40)]
    hand = {k: int(rng.integers(2)) for k in keys}
    weak = {k: (v if rng.random() < 0.8 else 1 - v) for k, v in hand.items() if rng.random() < 0.9}
    weak["only-weak"] = 1
    result = label_agreement(weak, hand)
    shared = sorted(set(weak) & set(hand))
    assert result.studies == len(shared)
    assert result.agreement == pytest.approx(np.mean([weak[k] == hand[k] for k in shared]))
    assert result.kappa == pytest.approx(cohen_kappa_score([hand[k] for k in shared], [weak[k] for k in shared]))


def test_agreement_without_shared_or_with_one_class():
    assert label_agreement({"a": 1}, {"b": 1}).studies == 0
    one_class = label_agreement({"a": 1, "b": 1}, {"a": 1, "b": 1})
    assert one_class.agreement == 1.0 and math.isnan(one_class.kappa)
    assert set(one_class.metrics()) == {"weak_label_studies", "weak_label_agreement"}  # NaN is never sent


# --------------------------------------------------------------------------- the site's dataset

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("weak") / "hospital-1"
    synth_site(site, site_index=0, n_studies=30, seed=2, reports=True)
    return site


def _splits(site: Path, **kwargs):
    args = {"labels_from": "reports", "report_finding": "opacity", "labeler_version": "ai4hi-negex-1",
            "image_size": 16, "augment": False}
    return load_site_splits(site, **{**args, **kwargs})


def test_weak_labels_follow_the_reports_and_agree_with_the_images(site):
    truth = json.loads((site / SYNTHETIC_REPORT_TRUTH).read_text())
    splits = _splits(site)
    items = [*splits.train.items, *splits.val.items, *splits.test.items]
    by_sop = {r.sop_instance_uid: r.study_instance_uid for r in splits.scan.instances}
    uncertain = {s for s, t in truth.items() if t["truth"].get("opacity") == "uncertain"}
    assert {by_sop[it.sop_instance_uid] for it in items} == set(truth) - uncertain  # ignore: uncertain left out
    for item in items:
        assert item.label == (truth[by_sop[item.sop_instance_uid]]["truth"].get("opacity") == "positive")
    # the synthetic reports agree with the images, so with the site's labels.csv
    assert splits.label_agreement.studies == len(items) and splits.label_agreement.agreement == 1.0
    assert splits.report_coverage["with_report"] == 30
    assert splits.weak_labels.summary()["dropped_uncertain"] == len(uncertain)


def test_uncertain_as_positive_labels_every_reported_study(site):
    splits = _splits(site, uncertain="positive")
    assert len(splits.train) + len(splits.val) + len(splits.test) == 30
    assert splits.label_agreement.studies == 30 and splits.label_agreement.agreement < 1.0


def test_weak_labels_need_no_labels_csv_and_then_report_no_agreement(site, tmp_path):
    copy = tmp_path / "hospital-1"
    shutil.copytree(site, copy)
    (copy / "labels.csv").unlink()
    splits = _splits(copy)
    assert splits.label_agreement is None and len(splits.train) > 0
    with pytest.raises(UserError, match="labels.csv"):
        load_site_splits(copy, image_size=16)  # hand labels asked for: still required


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"labeler_version": "ai4hi-negex-0"}, "ai4hi-negex-1"),
    ({"report_finding": "tumour"}, "tumour"),
    ({"labeler_version": None}, "labeler_version"),
    ({"labels_from": "spreadsheet"}, "labels_from"),
])
def test_bad_weak_label_settings_are_one_line_user_errors(site, kwargs, words):
    with pytest.raises(UserError, match=words) as info:
        _splits(site, **kwargs)
    assert "\n" not in str(info.value)


def test_a_site_without_reports_says_so(site, tmp_path):
    copy = tmp_path / "hospital-1"
    shutil.copytree(site, copy)
    (copy / "reports.csv").unlink()
    for sr in (copy / "dicom").rglob("report-*.dcm"):
        sr.unlink()
    with pytest.raises(UserError, match="no study has a weak label") as info:
        _splits(copy)
    assert "0 studies with a report" in str(info.value)

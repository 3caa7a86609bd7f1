"""The report labeler: negation, uncertainty, scopes, pseudo-triggers and versioned rules.

Cases are written as radiologists phrase chest radiograph reports (and as the NegEx and CheXpert
labeler papers list their triggers), not copied from the synthetic report templates.
"""

from __future__ import annotations

import pytest

from ai4hi_sdk.data.labeler import (CURRENT_VERSION, NEGEX_1, RULE_SETS, UnknownRuleSet, get_rule_set, label_report,
                                    mentions, sentences)

# a released version's rules never change: editing them needs a new version (and a new pin here)
PINNED = {"ai4hi-negex-1": "cda5574f7303094122229d57b8484f58d5cdc827b4792bd4fc0924e0f014e6ed"}


def labels(text: str) -> dict[str, str]:
    return label_report(text, NEGEX_1)


@pytest.mark.parametrize(("text", "expected"), [
    # pre-negation
    ("No pneumothorax.", {"pneumothorax": "negative"}),
    ("There is no pleural effusion.", {"effusion": "negative"}),
    ("Without evidence of pulmonary edema.", {"edema": "negative"}),
    ("Negative for acute rib fracture.", {"fracture": "negative"}),
    ("No focal consolidation, pleural effusion or pneumothorax.",
     {"consolidation": "negative", "effusion": "negative", "pneumothorax": "negative"}),
    ("Neither effusion nor pneumothorax is identified.", {"effusion": "negative", "pneumothorax": "negative"}),
    ("Interval resolution of the left basilar atelectasis.", {"atelectasis": "negative"}),
    # post-negation
    ("A pneumothorax is not seen.", {"pneumothorax": "negative"}),
    ("The previously described nodule has resolved.", {"opacity": "negative"}),
    ("Effusions are absent.", {"effusion": "negative"}),
    ("Fracture was excluded on the dedicated rib series.", {"fracture": "negative"}),
])
def test_negated_findings(text, expected):
    assert labels(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Possible small right pleural effusion.", {"effusion": "uncertain"}),
    ("Findings may represent early pulmonary edema.", {"edema": "uncertain"}),
    ("Cannot exclude a small left apical pneumothorax.", {"pneumothorax": "uncertain"}),
    ("A developing consolidation cannot be ruled out.", {"consolidation": "uncertain"}),
    ("Questionable nodule in the right mid lung.", {"opacity": "uncertain"}),
    ("Retrocardiac opacity, suspicious for pneumonia.", {"opacity": "positive"}),  # the opacity itself is seen
    ("Left basilar atelectasis versus consolidation.", {"atelectasis": "uncertain", "consolidation": "uncertain"}),
    ("Mild cardiomegaly is likely.", {"cardiomegaly": "uncertain"}),
    ("Is there a pneumothorax?", {"pneumothorax": "uncertain"}),
    ("Small effusion is not excluded.", {"effusion": "uncertain"}),
    # uncertainty phrases built from negation words are uncertain, not negative
    ("Can't rule out a rib fracture.", {"fracture": "uncertain"}),
])
def test_uncertain_findings(text, expected):
    assert labels(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    # a terminator ends the negation's scope
    ("No effusion, but a large right pneumothorax.", {"effusion": "negative", "pneumothorax": "positive"}),
    ("No pneumothorax; there is a small left effusion.", {"pneumothorax": "negative", "effusion": "positive"}),
    ("No consolidation, however there is bibasilar atelectasis.",
     {"consolidation": "negative", "atelectasis": "positive"}),
    # a trigger reaches forward only (pre) or backward only (post)
    ("Right upper lobe nodule, no effusion.", {"opacity": "positive", "effusion": "negative"}),
    ("Cardiomegaly. Pneumothorax is not seen.", {"cardiomegaly": "positive", "pneumothorax": "negative"}),
    # the nearest trigger wins
    ("No effusion, possibly a small nodule.", {"effusion": "negative", "opacity": "uncertain"}),
    # sentences do not leak into each other
    ("No edema. Mild cardiomegaly.", {"edema": "negative", "cardiomegaly": "positive"}),
    # window: a negation far away does not reach
    ("No acute osseous abnormality is demonstrated in the visualized thoracic spine and the heart shows cardiomegaly.",
     {"cardiomegaly": "positive"}),
])
def test_scopes(text, expected):
    assert labels(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("No change in the left lower lobe consolidation.", {"consolidation": "positive"}),
    ("No significant interval change of the right effusion.", {"effusion": "positive"}),
    ("No mass effect. Stable right hilar mass.", {"opacity": "positive"}),
    ("Not only an effusion but also edema.", {"effusion": "positive", "edema": "positive"}),
])
def test_pseudo_triggers_are_no_negation(text, expected):
    assert labels(text) == expected


def test_several_mentions_positive_wins_then_uncertain():
    assert labels("No right effusion. Small left effusion.") == {"effusion": "positive"}
    assert labels("No effusion on the right. Possible small left effusion.") == {"effusion": "uncertain"}
    assert labels("No effusion. No pleural fluid.") == {"effusion": "negative"}


def test_unmentioned_findings_are_absent_and_blank_text_is_empty():
    assert labels("The lungs are clear. Heart size is normal.") == {}
    assert labels("") == {} and labels("   \n ") == {}


def test_case_punctuation_and_line_breaks():
    text = "FINDINGS:\nNO PNEUMOTHORAX.\r\nIMPRESSION: Large LEFT pleural effusion!"
    assert labels(text) == {"pneumothorax": "negative", "effusion": "positive"}
    assert sentences("One. Two\nthree") == [["one"], ["two"], ["three"]]


def test_mentions_give_spans_within_their_sentence():
    found = mentions("No effusion. Right apical pneumothorax.", NEGEX_1)
    assert [(m.finding, m.sentence, m.assertion) for m in found] == [
        ("effusion", 0, "negative"), ("pneumothorax", 1, "positive")]
    tokens = sentences("No effusion. Right apical pneumothorax.")[1]
    assert tokens[found[1].start:found[1].end] == ["pneumothorax"]


def test_released_rule_sets_are_pinned_and_found_by_version():
    assert set(RULE_SETS) == set(PINNED)
    for version, digest in PINNED.items():
        assert get_rule_set(version).sha256 == digest, f"rule set {version} changed: release a new version"
    assert CURRENT_VERSION in RULE_SETS
    with pytest.raises(UnknownRuleSet, match="ai4hi-negex-1"):
        get_rule_set("ai4hi-negex-99")


def test_content_hash_sees_any_rule_change():
    from dataclasses import replace

    changed = replace(NEGEX_1, pre_negation=NEGEX_1.pre_negation[:-1])
    assert changed.sha256 != NEGEX_1.sha256
    assert replace(NEGEX_1, window=NEGEX_1.window + 1).sha256 != NEGEX_1.sha256

"""Synthetic radiology reports for synthetic chest radiographs (``ai4hi data synth --reports``).

:func:`synthetic_report` writes a templated report (findings and impression) for one study and
returns its ground truth: for every finding the report mentions, ``positive``, ``negative`` or
``uncertain``. The report agrees with the image: a study whose radiograph holds the round opacity
says so, at the side (the patient's, as a radiologist reads a PA film) and zone where it was drawn,
with its size; or hedges about it (uncertain wording); a study without one negates it, hedges, or
does not mention it. Other findings (effusion, pneumothorax, cardiomegaly, ...) appear as text-only
distractors, negated, affirmed or uncertain, sometimes in the opacity's sentence, so a labeler's
scopes are exercised. The phrase lists are written independently of the labeler's rules.

:func:`write_basic_text_sr` (pydicom) and :func:`write_highdicom_sr` (highdicom Enhanced or
Comprehensive SR) store a report as a DICOM SR object in the study.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from ai4hi_sdk.data.labeler import Assertion

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
OpacityCase = Literal["affirmed", "negated", "uncertain", "unmentioned"]
SrKind = Literal["basic", "enhanced", "comprehensive"]


@dataclass(frozen=True)
class FindingPlacement:
    """Where the synthetic opacity was drawn: the patient's ``side`` (right / left), ``zone``
    (upper / mid / lower third of that lung) and its diameter in mm."""

    side: str
    zone: str
    diameter_mm: int


@dataclass(frozen=True)
class SyntheticReport:
    """A templated report and its ground truth (finding -> assertion, mentioned findings only)."""

    findings: str
    impression: str
    truth: dict[str, Assertion]
    opacity_case: OpacityCase


_AFFIRMED = (
    "There is a {size}round opacity in the {side} {zone} zone.",
    "{Size}nodular opacity projecting over the {side} {zone} lung zone.",
    "A rounded density measuring {d} mm is seen in the {side} {zone} zone.",
    "{Side} {zone} zone mass, approximately {d} mm.",
    "Well-circumscribed opacity in the {side} {zone} zone, measuring {d} mm.",
)
_AFFIRMED_IMPRESSION = (
    "{Side} {zone} zone opacity. CT chest recommended for further characterization.",
    "Round opacity in the {side} lung, {d} mm.",
    "{Side} lung mass.",
    "Findings consistent with a {side} lung nodule.",
)
_UNCERTAIN = (
    "Possible {size}opacity in the {side} {zone} zone.",
    "Questionable nodular opacity in the {side} {zone} lung.",
    "An opacity in the {side} {zone} zone cannot be excluded.",
    "{Side} {zone} zone opacity is suspected, possibly overlapping vessels.",
    "Ill-defined {side} {zone} zone shadow, may represent a nodule.",
    "Cannot rule out a small nodule in the {side} {zone} zone.",
    "Subtle opacity in the {side} {zone} zone?",
)
_UNCERTAIN_IMPRESSION = (
    "Possible {side} lung nodule; CT is suggested.",
    "Questionable {side} {zone} zone opacity, follow-up radiograph advised.",
    "{Side} lung nodule cannot be excluded.",
)
_NEGATED = (
    "No focal opacity.",
    "No suspicious pulmonary nodule or mass.",
    "The lungs are clear without focal opacity.",
    "There is no pulmonary nodule.",
    "Focal opacity is not seen.",
    "Lungs: no nodules, masses or focal opacities.",
    "No evidence of a lung mass or nodule.",
)
_NEGATED_IMPRESSION = (
    "No focal opacity.",
    "No radiographic evidence of a lung nodule.",
    "No acute cardiopulmonary abnormality.",  # mentions nothing: the findings carry the negation
)
_UNMENTIONED = ("The lungs are clear.", "Lungs are well expanded and clear.")
_UNMENTIONED_IMPRESSION = ("No acute cardiopulmonary process.", "Normal chest radiograph.")

N: Assertion = "negative"
P: Assertion = "positive"
U: Assertion = "uncertain"
#: text-only findings: (sentence, truth). ``{oside}`` is a side, not necessarily the opacity's.
_DISTRACTORS: tuple[tuple[str, dict[str, Assertion | None]], ...] = (
    ("No pleural effusion or pneumothorax.", {"effusion": N, "pneumothorax": N}),
    ("No pneumothorax.", {"pneumothorax": N}),
    ("Pneumothorax is not seen.", {"pneumothorax": N}),
    ("Heart size is normal.", {"cardiomegaly": None}),  # None: about the finding, mentions no phrase of it
    ("The cardiomediastinal silhouette is within normal limits.", {"cardiomegaly": None}),
    ("Mild cardiomegaly.", {"cardiomegaly": P}),
    ("Stable cardiomegaly, no change since the prior study.", {"cardiomegaly": P}),
    ("Possible small {oside} pleural effusion.", {"effusion": U}),
    ("Blunting of the {oside} costophrenic angle, may represent a small effusion.", {"effusion": U}),
    ("No pulmonary edema.", {"edema": N}),
    ("No displaced rib fracture.", {"fracture": N}),
    ("Minimal atelectasis at the {oside} base.", {"atelectasis": P}),
    ("Cardiomegaly cannot be excluded on this projection.", {"cardiomegaly": U}),
    ("No consolidation.", {"consolidation": N}),
    ("No effusion, but there is minimal basilar atelectasis.", {"effusion": N, "atelectasis": P}),
    ("Healed {oside} rib fracture.", {"fracture": P}),
    ("No focal consolidation, effusion or pneumothorax.", {"consolidation": N, "effusion": N, "pneumothorax": N}),
    ("Old healed fracture of the {oside} clavicle, no acute fracture.", {"fracture": P}),
    ("Probable mild interstitial edema.", {"edema": U}),
)
_PRIORITY = {P: 2, U: 1, N: 0}


def _merge(into: dict[str, Assertion], more: dict[str, Assertion | None]) -> None:
    for finding, assertion in more.items():
        if assertion is None:
            continue
        if finding not in into or _PRIORITY[assertion] > _PRIORITY[into[finding]]:
            into[finding] = assertion


def _fill(template: str, **values: str) -> str:
    caps = {k[0].upper() + k[1:]: (v[:1].upper() + v[1:]) for k, v in values.items()}
    text = template.format(**values, **caps)
    return text[:1].upper() + text[1:]


def synthetic_report(rng: np.random.Generator, placement: FindingPlacement | None) -> SyntheticReport:
    """One study's report. ``placement`` is the drawn opacity (None: the image has none).

    Positive images: affirmed (85 %) or uncertain (15 %) wording at the drawn side and zone.
    Negative images: negated (85 %), uncertain at a random place (7 %) or not mentioned (8 %).
    """
    draw = float(rng.random())
    if placement is not None:
        case: OpacityCase = "affirmed" if draw < 0.85 else "uncertain"
        where = placement
    else:
        case = "negated" if draw < 0.85 else "uncertain" if draw < 0.92 else "unmentioned"
        where = FindingPlacement(str(rng.choice(["right", "left"])), str(rng.choice(["upper", "mid", "lower"])),
                                 int(rng.integers(20, 40)))
    values = {"side": where.side, "zone": where.zone, "d": str(where.diameter_mm),
              "size": "large " if where.diameter_mm >= 60 else "small " if where.diameter_mm < 30 else ""}
    pools = {"affirmed": (_AFFIRMED, _AFFIRMED_IMPRESSION), "uncertain": (_UNCERTAIN, _UNCERTAIN_IMPRESSION),
             "negated": (_NEGATED, _NEGATED_IMPRESSION), "unmentioned": (_UNMENTIONED, _UNMENTIONED_IMPRESSION)}
    findings_pool, impression_pool = pools[case]
    opacity_sentence = _fill(findings_pool[int(rng.integers(len(findings_pool)))], **values)
    impression = _fill(impression_pool[int(rng.integers(len(impression_pool)))], **values)
    truth: dict[str, Assertion] = {}
    opacity_truth: Assertion | None = {"affirmed": P, "uncertain": U, "negated": N}.get(case)
    if opacity_truth is not None:
        truth["opacity"] = opacity_truth

    # distractors about other findings, each finding at most once
    chosen: list[tuple[str, dict[str, Assertion | None]]] = []
    used: set[str] = set()
    for index in rng.permutation(len(_DISTRACTORS))[: int(rng.integers(1, 4))]:
        text, facts = _DISTRACTORS[int(index)]
        if used & set(facts):
            continue
        used |= set(facts)
        oside = str(rng.choice(["right", "left"]))
        chosen.append((_fill(text, oside=oside), facts))
        _merge(truth, facts)
    sentences = [opacity_sentence]
    if chosen and case != "unmentioned" and not opacity_sentence.endswith("?") and rng.random() < 0.3:
        # one sentence, two findings: the second clause behind "but" (a NegEx scope terminator)
        text, _ = chosen.pop(0)
        sentences = [opacity_sentence.rstrip(".") + ", but " + text[0].lower() + text[1:]]
    sentences += [text for text, _ in chosen]
    return SyntheticReport(" ".join(sentences), impression, truth, case)


# --------------------------------------------------------------------------- DICOM SR objects

def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _text_item(concept: Dataset, text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = text
    return item


def _container(concept: Dataset, children: list[Dataset], relationship: str | None = "CONTAINS") -> Dataset:
    item = Dataset()
    if relationship:
        item.RelationshipType = relationship
    item.ValueType = "CONTAINER"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = Sequence(children)
    return item


def write_basic_text_sr(path: Path, image: Dataset, *, sop_uid: str, series_uid: str, findings: str,
                        impression: str, when: datetime) -> None:
    """A Basic Text SR (pydicom) in ``image``'s study: Findings and Impressions sections (DCM codes)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(BASIC_TEXT_SR)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = UID(BASIC_TEXT_SR), UID(sop_uid)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "StudyDescription"):
        if keyword in image:
            setattr(ds, keyword, image[keyword].value)
    ds.Modality = "SR"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = UID(series_uid), 2, 1
    ds.Manufacturer = image.get("Manufacturer", "")
    ds.ContentDate, ds.ContentTime = DA(when.strftime("%Y%m%d")), TM(when.strftime("%H%M%S"))
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = "SYNTHETIC^RADIOLOGIST"
    observer.VerifyingOrganization = image.get("InstitutionName", "")
    observer.VerificationDateTime = when.strftime("%Y%m%d%H%M%S")
    observer.VerifyingObserverIdentificationCodeSequence = Sequence()
    ds.VerifyingObserverSequence = Sequence([observer])
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = Sequence([
        _container(_code("121070", "DCM", "Findings"), [_text_item(_code("121071", "DCM", "Finding"), findings)]),
        _container(_code("121072", "DCM", "Impressions"),
                   [_text_item(_code("121073", "DCM", "Impression"), impression)]),
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_highdicom_sr(path: Path, image: Dataset, *, kind: SrKind, sop_uid: str, series_uid: str, findings: str,
                       impression: str, when: datetime) -> None:
    """An Enhanced or Comprehensive SR written with highdicom, with ``image`` as its evidence. Its
    creation, content and verification times are ``when`` (highdicom stamps "now": same seed, same bytes)."""
    import highdicom as hd
    from highdicom.sr import CodedConcept, ContainerContentItem, TextContentItem

    def section(code: tuple[str, str, str], text_code: tuple[str, str, str], text: str) -> ContainerContentItem:
        box = ContainerContentItem(name=CodedConcept(*code), relationship_type="CONTAINS")
        box.ContentSequence = Sequence([TextContentItem(name=CodedConcept(*text_code), value=text,
                                               relationship_type="CONTAINS")])
        return box

    root = ContainerContentItem(name=CodedConcept("18748-4", "LN", "Diagnostic Imaging Report"))
    root.ContentSequence = Sequence([
        section(("121070", "DCM", "Findings"), ("121071", "DCM", "Finding"), findings),
        section(("121072", "DCM", "Impressions"), ("121073", "DCM", "Impression"), impression),
    ])
    cls = hd.sr.EnhancedSR if kind == "enhanced" else hd.sr.ComprehensiveSR
    sr = cls(evidence=[image], content=root, series_instance_uid=series_uid, series_number=2,
             sop_instance_uid=sop_uid, instance_number=1, manufacturer=str(image.get("Manufacturer", "")),
             is_complete=True, is_final=True, is_verified=True, verifying_observer_name="SYNTHETIC^RADIOLOGIST",
             verifying_organization=str(image.get("InstitutionName", "") or "Synthetic hospital"))
    day, clock = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    sr.InstanceCreationDate, sr.InstanceCreationTime = DA(day), TM(clock)
    sr.ContentDate, sr.ContentTime = DA(day), TM(clock)
    for observer in sr.get("VerifyingObserverSequence", []):
        observer.VerificationDateTime = day + clock
    for equipment in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = day + clock
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path, enforce_file_format=True)

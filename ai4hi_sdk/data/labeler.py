"""Rule-based report labeler (NegEx-style): a radiology report -> per-finding labels.

A site turns its reports into weak labels with a **versioned rule set**: the job states the
version (``data.labeler_version``) and a site refuses a version its SDK does not hold, so every
site of a job labels with the same rules. A version's rules never change once released (a test
pins each version's content hash); new rules get a new version.

Algorithm (Chapman et al., NegEx, J Biomed Inform 2001, with ConText's uncertainty classes):

1. The text is split into sentences (``.``/``!``/``?`` followed by white space, line breaks) and
   each sentence into lower-case word tokens (``;`` and ``:`` stay as tokens: they end a scope).
2. Phrases are matched on tokens, longest first: *pseudo-triggers* ("no change", "not only") are
   matched first and mask their tokens, then finding mentions, negation and uncertainty triggers
   and scope terminators ("but", "however", "there is", ``;``).
3. A *pre* trigger covers the mentions after it, a *post* trigger the mentions before it, up to
   ``window`` tokens and never across a terminator. A phrase may be both ("not excluded").
4. A mention covered by triggers takes the class of the **nearest** one (a tie is uncertain): in
   "no effusion, possibly a small opacity" the opacity is uncertain, the effusion negative.
5. A finding mentioned several times is ``positive`` if any mention is, else ``uncertain`` if
   any is, else ``negative``. A finding not mentioned is absent from the result.

Known limits (those of NegEx): scopes are token windows, not syntax, so a trigger reaches every
mention in its window ("left basilar opacity, atelectasis versus consolidation" makes the opacity
uncertain too); double negation and temporal words ("old", "prior") are not modelled.

Why our own rules: PyPI has no maintained clinical NLP library that covers negation *and*
uncertainty offline here. negspacy (NegEx on spaCy) runs offline with a blank English pipeline but
detects negation only and pulls spaCy and ~20 packages into every site; medspacy (ConText) pins
spaCy < 3.8 and numpy < 2, which this SDK's stack cannot take; pyConTextNLP is unmaintained since
2019. The rules here are small, pure Python and versioned by us.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

Assertion = Literal["positive", "negative", "uncertain"]
ASSERTIONS: tuple[Assertion, ...] = ("positive", "negative", "uncertain")

_TOKEN = re.compile(r"[a-z0-9]+(?:['\u2019][a-z]+)?|[;:?]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class UnknownRuleSet(KeyError):
    """A job asked for a rule-set version this SDK does not hold."""


def _phrases(*texts: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(_TOKEN.findall(t.lower())) for t in texts)


@dataclass(frozen=True)
class RuleSet:
    """One released version of the labeler's rules (phrases are token tuples, lower case).

    Attributes:
        version: the name a job states, e.g. ``ai4hi-negex-1``.
        findings: finding name -> phrases that mention it.
        pseudo: phrases that contain a trigger word but are no trigger ("no change").
        pre_negation / post_negation: negation triggers before / after the mention.
        pre_uncertainty / post_uncertainty: uncertainty triggers before / after the mention.
        terminators: phrases that end a trigger's scope.
        window: the most tokens a trigger reaches.
    """

    version: str
    findings: Mapping[str, tuple[tuple[str, ...], ...]]
    pseudo: tuple[tuple[str, ...], ...]
    pre_negation: tuple[tuple[str, ...], ...]
    post_negation: tuple[tuple[str, ...], ...]
    pre_uncertainty: tuple[tuple[str, ...], ...]
    post_uncertainty: tuple[tuple[str, ...], ...]
    terminators: tuple[tuple[str, ...], ...]
    window: int = 10

    @property
    def finding_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.findings))

    @cached_property  # the matcher cache is keyed by it, once per report
    def sha256(self) -> str:
        """Content hash of the rules (pins a released version: its rules never change)."""
        doc = {"version": self.version, "window": self.window,
               "findings": {k: [list(p) for p in v] for k, v in sorted(self.findings.items())},
               **{name: [list(p) for p in getattr(self, name)] for name in
                  ("pseudo", "pre_negation", "post_negation", "pre_uncertainty", "post_uncertainty", "terminators")}}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- released rule sets

NEGEX_1 = RuleSet(
    version="ai4hi-negex-1",
    findings={
        "opacity": _phrases("opacity", "opacities", "opacification", "nodule", "nodules", "nodular opacity",
                            "nodular opacities", "nodular density", "round density", "rounded density", "mass",
                            "masses", "lesion", "lesions", "focal density"),
        "effusion": _phrases("pleural effusion", "pleural effusions", "effusion", "effusions", "pleural fluid"),
        "pneumothorax": _phrases("pneumothorax", "pneumothoraces"),
        "cardiomegaly": _phrases("cardiomegaly", "cardiac enlargement", "enlarged heart",
                                 "enlarged cardiac silhouette", "enlargement of the cardiac silhouette"),
        "consolidation": _phrases("consolidation", "consolidations", "airspace disease", "air space disease"),
        "edema": _phrases("edema", "pulmonary edema", "interstitial edema", "vascular congestion"),
        "fracture": _phrases("fracture", "fractures", "rib fracture", "rib fractures"),
        "atelectasis": _phrases("atelectasis", "atelectatic change", "atelectatic changes"),
    },
    pseudo=_phrases("no change", "no interval change", "no significant change", "no significant interval change",
                    "no increase", "no decrease", "not only", "not necessarily", "without difficulty",
                    "no further", "gram negative", "not significantly changed", "mass effect"),
    pre_negation=_phrases("no", "not", "without", "absence of", "absent", "negative for", "free of", "clear of",
                          "no evidence of", "no signs of", "no sign of", "no findings of", "no radiographic evidence of",
                          "there is no", "there are no", "neither", "nor", "no definite", "fails to reveal",
                          "resolution of", "rules out", "ruled out for"),
    post_negation=_phrases("is absent", "are absent", "not seen", "is not seen", "are not seen", "not identified",
                           "is not identified", "not present", "is not present", "not visualized",
                           "not demonstrated", "has resolved", "have resolved", "resolved", "is excluded",
                           "are excluded", "was excluded", "has been excluded", "is ruled out", "ruled out"),
    pre_uncertainty=_phrases("possible", "possibly", "probable", "probably", "likely", "may represent",
                             "may reflect", "may be", "might be", "could be", "could represent", "suspicious for",
                             "suspected", "suspect", "questionable", "question of", "concern for", "concerning for",
                             "cannot exclude", "can not exclude", "cannot rule out", "can not rule out",
                             "can't exclude", "can't rule out", "not excluded", "equivocal", "indeterminate",
                             "suggestive of", "suggesting", "differential includes", "versus", "vs"),
    post_uncertainty=_phrases("cannot be excluded", "can not be excluded", "cannot be ruled out",
                              "can not be ruled out", "not excluded", "is not excluded", "not ruled out",
                              "is not ruled out", "is possible", "is suspected", "are suspected", "is questionable",
                              "is likely", "likely", "may be present", "may be", "might be", "could be",
                              "is not certain", "versus", "vs", "?"),
    terminators=_phrases("but", "however", "although", "though", "except", "aside from", "apart from", "which",
                         "yet", "nevertheless", "whereas", "while", ";", ":", "there is", "there are",
                         "is seen", "are seen", "is noted", "are noted", "is present", "are present"),
)

#: every released version, by name
RULE_SETS: dict[str, RuleSet] = {NEGEX_1.version: NEGEX_1}
#: the version new jobs should state
CURRENT_VERSION = NEGEX_1.version


def get_rule_set(version: str) -> RuleSet:
    """The released rule set ``version`` (raises :class:`UnknownRuleSet` naming the versions held)."""
    try:
        return RULE_SETS[version]
    except KeyError:
        raise UnknownRuleSet(f"report labeler rule set {version!r} is not in this SDK "
                             f"(it holds: {', '.join(sorted(RULE_SETS))})") from None


# --------------------------------------------------------------------------- labelling

@dataclass(frozen=True)
class Mention:
    """One mention of a finding in a sentence: token span and its assertion (site-local only)."""

    finding: str
    sentence: int
    start: int
    end: int
    assertion: Assertion


_TRIGGER_ROLES = ("pre_negation", "post_negation", "pre_uncertainty", "post_uncertainty", "terminators")


@dataclass
class _Span:
    start: int
    end: int
    roles: frozenset[str]  # "pseudo", "finding", or trigger roles (a phrase may be pre and post at once)
    finding: str = ""


@dataclass
class _Matcher:
    """Longest-match phrase lookup: first token -> (phrase, roles, finding), longest first."""

    table: dict[str, list[tuple[tuple[str, ...], frozenset[str], str]]] = field(default_factory=dict)

    @classmethod
    def build(cls, rules: RuleSet) -> "_Matcher":
        roles: dict[tuple[str, ...], set[str]] = {}
        for role in _TRIGGER_ROLES:
            for phrase in getattr(rules, role):
                roles.setdefault(phrase, set()).add(role)
        m = cls()
        for phrase in rules.pseudo:
            m._add(phrase, frozenset({"pseudo"}))
        for name, phrases in rules.findings.items():
            for phrase in phrases:
                m._add(phrase, frozenset({"finding"}), name)
        for phrase, r in roles.items():
            m._add(phrase, frozenset(r))
        for entries in m.table.values():
            entries.sort(key=lambda e: -len(e[0]))
        return m

    def _add(self, phrase: tuple[str, ...], roles: frozenset[str], finding: str = "") -> None:
        if phrase:
            self.table.setdefault(phrase[0], []).append((phrase, roles, finding))

    def spans(self, tokens: list[str], pseudo: bool, taken: list[bool]) -> list[_Span]:
        """Longest non-overlapping matches of pseudo-triggers (``pseudo``) or of everything else."""
        out: list[_Span] = []
        i = 0
        while i < len(tokens):
            hit = None
            if not taken[i]:
                for phrase, roles, finding in self.table.get(tokens[i], ()):
                    n = len(phrase)
                    if (("pseudo" in roles) == pseudo and tuple(tokens[i:i + n]) == phrase
                            and not any(taken[i:i + n])):
                        hit = _Span(i, i + n, roles, finding)
                        break
            if hit is None:
                i += 1
                continue
            out.append(hit)
            for k in range(hit.start, hit.end):
                taken[k] = True
            i = hit.end
        return out


_MATCHERS: dict[str, _Matcher] = {}


def _matcher(rules: RuleSet) -> _Matcher:
    cached = _MATCHERS.get(rules.sha256)
    if cached is None:
        cached = _MATCHERS[rules.sha256] = _Matcher.build(rules)
    return cached


def sentences(text: str) -> list[list[str]]:
    """Lower-case word tokens of each sentence of ``text``."""
    return [toks for part in _SENTENCE_END.split(text or "") if (toks := _TOKEN.findall(part.lower()))]


def _nearest(mention: _Span, others: Iterable[_Span], side: str, window: int) -> tuple[int, int, Assertion] | None:
    """The nearest trigger covering ``mention`` from ``side`` ('pre': triggers before it)."""
    best: tuple[int, int, Assertion] | None = None
    for other in others:
        distance = mention.start - other.end if side == "pre" else other.start - mention.end
        if distance > window:
            break
        triggers: tuple[tuple[str, int, Assertion], ...] = (("uncertainty", 0, "uncertain"), ("negation", 1, "negative"))
        for kind, tie, assertion in triggers:
            if f"{side}_{kind}" in other.roles:
                candidate = (distance, tie, assertion)
                best = candidate if best is None else min(best, candidate)
        if "terminators" in other.roles:
            break
    return best


def _classify(tokens: list[str], matcher: _Matcher, window: int) -> list[tuple[_Span, Assertion]]:
    taken = [False] * len(tokens)
    matcher.spans(tokens, True, taken)  # pseudo-triggers only mask their tokens
    spans = sorted(matcher.spans(tokens, False, taken), key=lambda s: s.start)
    out: list[tuple[_Span, Assertion]] = []
    for index, mention in enumerate(spans):
        if "finding" not in mention.roles:
            continue
        found = [b for b in (_nearest(mention, reversed(spans[:index]), "pre", window),
                             _nearest(mention, spans[index + 1:], "post", window)) if b is not None]
        out.append((mention, min(found)[2] if found else "positive"))
    return out


def mentions(text: str, rules: RuleSet) -> list[Mention]:
    """Every finding mention of ``text`` with its assertion (stays at the site)."""
    matcher = _matcher(rules)
    out: list[Mention] = []
    for s_index, tokens in enumerate(sentences(text)):
        for span, assertion in _classify(tokens, matcher, rules.window):
            out.append(Mention(span.finding, s_index, span.start, span.end, assertion))
    return out


_PRIORITY: dict[Assertion, int] = {"positive": 2, "uncertain": 1, "negative": 0}


def label_report(text: str, rules: RuleSet) -> dict[str, Assertion]:
    """Finding -> ``positive`` / ``negative`` / ``uncertain`` for every finding ``text`` mentions.

    Several mentions of one finding: positive if any is, else uncertain if any is, else negative.
    """
    out: dict[str, Assertion] = {}
    for mention in mentions(text, rules):
        current = out.get(mention.finding)
        if current is None or _PRIORITY[mention.assertion] > _PRIORITY[current]:
            out[mention.finding] = mention.assertion
    return out

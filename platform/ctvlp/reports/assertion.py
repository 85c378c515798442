"""Assertion of a clause (NegEx-style): is what it says about its anatomies abnormal, uncertain,
normal, or nothing?

Per comma segment of a clause (:meth:`Assertion.segment_status`): a measurement at or beyond its
normal limit is abnormal (:mod:`ctvlp.reports.measure`; the report's own reference range is masked
out first); stability and pseudo-negation phrases are removed ("not appreciably changed",
"unchanged"); a pre-negation negates the rest of its segment, a post-negation the segment before
it (and, opening the segment, the noun after it: "resolved consolidation"; a verdict's qualifier
is covered too: "normal in size and enhancement", "normally distended"); a segment that still
says something besides anatomy names, neutral words ("size", "shows") and measurements is
``abnormal`` ("Thoracic aorta is calcified, not dilated"); a hedge ("possible", "cannot be
excluded", "is questionable") with no finding stated before it is ``uncertain``; a segment with a
negation or a stability statement and nothing else is ``normal`` ("Heart size is unchanged.").
A post-operative state (``lexicon.POSTOPERATIVE``: "CABG", "esophagectomy", "stent graft") is
abnormal whatever verdict goes with it ("gastric conduit, unremarkable": LABELS.md counts
post-operative findings as present).

Per clause (:meth:`Assertion.status`, the strongest of its segments): a list after a negated
segment stays negated ("no nodule, consolidation or effusion", "no mass, nodule or infiltration
was detected"); a last segment that is only a normal verdict ("Pericardial thickness is 2 mm,
normal", "Trace pericardial fluid, within physiologic limits", "..., resolved") makes the clause
normal, and one with a copula ("heart contour, size are normal") the bare list before it.

The trigger phrases are :mod:`ctvlp.reports.lexicon`'s; both the rule parser's clause splitting
and its labels use this class.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ctvlp.reports import lexicon as L
from ctvlp.reports.measure import measured_abnormal, split_reference

_WORD = re.compile(r"[a-z][a-z-]*", re.I)
_MEASURE = re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm)\b", re.I)
# Where a clause's items and statements part ("X, Y and Z", "X with Y"): ctvlp.reports.rules splits there.
SOFT_SPLIT = re.compile(r",?\s+(?:and|with|without|while)\s+|,\s*", re.I)
_CONJUNCTION = re.compile(r"\s(?:and|with|plus)\s", re.I)
RANK = {"abnormal": 3, "uncertain": 2, "normal": 1, None: 0}
_NEUTRAL = L.FILLER_WORDS | L.NEUTRAL_WORDS


def _neutral(word: str) -> bool:
    """A filler or neutral word, or the plural of one ("diameters")."""
    return word in _NEUTRAL or (word.endswith("s") and word[:-1] in _NEUTRAL)


class Assertion:
    """The assertion triggers of the lexicon, compiled once, and the rules that apply them.

    Args:
        terms: the parser's anatomy phrases (masked: an anatomy name is no finding).
        blockers: phrases that contain an anatomy word but name something else (masked too).
        mentions: ``text -> anatomies`` of the parser (a closing verdict with its own subject).
    """

    def __init__(self, terms: re.Pattern[str], blockers: re.Pattern[str], mentions: Callable[[str], list[str]]):
        self._terms, self._blockers, self._mentions = terms, blockers, mentions
        self.pre = L.phrase_regex(L.PRE_NEGATIONS)
        self._post = L.phrase_regex(L.POST_NEGATIONS)
        self._hedge_pre = L.phrase_regex(L.HEDGES_PRE)
        self._hedge_post = L.phrase_regex(L.HEDGES_POST)
        self._confident = L.phrase_regex(L.CONFIDENT)
        self._negated_hedges = L.phrase_regex(L.NEGATED_HEDGES)
        self.pseudo = L.phrase_regex(L.PSEUDO_NEGATIONS + L.STABILITY)
        self.findings = L.phrase_regex(L.FINDING_TERMS)
        self._postoperative = L.phrase_regex(L.POSTOPERATIVE)

    def content_words(self, text: str) -> list[str]:
        masked = self._terms.sub(" ", self._blockers.sub(" ", text))
        return [w for w in _WORD.findall(masked.lower()) if not _neutral(w)]

    def says_something(self, text: str) -> bool:
        """A finding term or a content word (not anatomy, filler, neutral) in ``text``."""
        return bool(self.findings.search(text) or self.content_words(text))

    def is_statement(self, text: str) -> bool:
        words = set(_WORD.findall(text.lower()))
        return bool(
            words & L.PREDICATE_WORDS
            or self.pre.search(text) or self._post.search(text) or self.pseudo.search(text)
            or self._hedge_pre.search(text) or self._hedge_post.search(text) or self.findings.search(text)
        )

    def has_own_assertion(self, text: str) -> bool:
        """A verb, trigger, degree word or measurement of its own: not the tail of a negated list."""
        words = set(_WORD.findall(text.lower()))
        return bool(words & (L.PREDICATE_WORDS | L.DEGREE_WORDS) or _MEASURE.search(text)
                    or self.pre.search(text) or self._post.search(text)
                    or self._hedge_pre.search(text) or self._hedge_post.search(text))

    def list_item(self, text: str) -> bool:
        """An item of a list begun before it: no assertion of its own, or an "or"/"nor" item whose
        only verb says the list exists ("no mass, nodule or infiltration was detected")."""
        if not self.has_own_assertion(text):
            return True
        if not re.search(r"\b(?:or|nor)\b", text, re.I):
            return False
        rest = " ".join(w for w in _WORD.findall(text) if w.lower() not in L.EXISTENCE_WORDS)
        return not self.has_own_assertion(rest)

    def continues_negated_list(self, left: str, right: str) -> bool:
        # "no nodule, consolidation or emphysema": the negation covers every item of the list, so
        # a right part with no verb or trigger of its own stays in the negated clause (NegEx scope).
        if not self.pre.search(self.pseudo.sub(" ", left)):
            return False
        return self.list_item(right)

    def _affirmed(self, text: str) -> str:
        """The part of a segment no negation covers: before the first pre-negation (outside a
        post-negation phrase such as "is not seen"), after the last post-negation before it."""
        posts = list(self._post.finditer(text))
        pre = next((m for m in self.pre.finditer(text) if not any(  # "not" inside "is not seen"
            p.start() <= m.start() < p.end() and len(p.group()) >= len(m.group()) for p in posts)), None)
        lead = _WORD.findall(text[: posts[0].start()].lower()) if posts else ["-"]
        if all(w in L.FILLER_WORDS for w in lead) and (pre is None or posts[0].start() < pre.start()):
            # a verdict before its noun negates what follows ("resolved consolidation"), up to a
            # conjunction ("normal caliber aorta and mild plaque")
            conj = _CONJUNCTION.search(text, posts[0].end())
            return self._affirmed(text[conj.end() :]) if conj else ""
        end = pre.start() if pre else len(text)
        last = max((m for m in posts if m.end() <= end), key=lambda m: m.end(), default=None)
        if last is None:
            return text[:end]
        rest = text[last.end() : end]
        if self._qualifies_verdict(last.group(), rest):
            return ""
        return rest

    def _qualifies_verdict(self, verdict: str, rest: str) -> bool:
        """``rest`` only says in what respect the verdict holds: "normal in size and enhancement",
        "normal for age", "normal caliber throughout", "normally distended"."""
        words = _WORD.findall(rest.lower())
        if not words or self.findings.search(rest) or set(words) & L.DEGREE_WORDS:
            return False
        return words[0] in L.VERDICT_PREPOSITIONS or (verdict.lower() == "normally" and len(words) == 1)

    def shared_verdict(self, left: str, rest: str) -> bool:
        """``left`` is the first of a list of bare subjects that ``rest`` closes with one verdict:
        "Pleural effusion[, pneumothorax and pericardial effusion were not observed]"."""
        if self.has_own_assertion(left):
            return False
        first = next((t for t in SOFT_SPLIT.split(rest) if self.has_own_assertion(t)), "")
        return self._closing_verdict(first)

    def _verdict_only(self, segment: str) -> bool:
        """Only a normal verdict: "normal", "all within normal limits", "resolved"."""
        rest = self._confident.sub(" ", self._post.sub(" ", segment))  # "likely physiologic"
        return rest != segment and not [w for w in _WORD.findall(rest.lower()) if w not in L.FILLER_WORDS]

    def _closing_verdict(self, segment: str) -> bool:
        """A copula and a post-negation that ends the segment: "size are normal", "were not seen"."""
        posts = list(self._post.finditer(segment))
        if not posts or self.pre.search(self.pseudo.sub(" ", segment[: posts[0].start()])):
            return False
        head = set(_WORD.findall(segment[: posts[-1].end()].lower()))
        return bool(head & L.COPULAS) and not self.says_something(segment[posts[-1].end() :])

    def segment_status(self, segment: str, anatomies: list[str] | None = None) -> str | None:
        """"abnormal", "uncertain", "normal" or None for one comma segment (see the module doc)."""
        if measured_abnormal(segment, anatomies or []) or self._postoperative.search(segment):
            return "abnormal"
        text = self._negated_hedges.sub("no", split_reference(segment)[0])  # "(normal < 40 mm)" is no verdict
        stated = bool(self.pseudo.search(text))
        text = self._confident.sub(" ", self.pseudo.sub(" ", text))
        if self._hedge_post.search(text):
            return "uncertain"
        hedge = self._hedge_pre.search(text)
        if hedge:
            return "abnormal" if self.says_something(self._affirmed(text[: hedge.start()])) else "uncertain"
        affirmed = self._affirmed(text)
        if self.says_something(affirmed):
            return "abnormal"
        return "normal" if (affirmed != text or stated) else None

    def status(self, clause: str, anatomies: list[str] | None = None) -> str | None:
        """A clause's assertion: the strongest of its comma segments' (abnormal > uncertain >
        normal > None); the items of a negated list stay negated."""
        segments = [s for s in clause.split(",") if s.strip()]
        found: list[str | None] = []
        negated = False
        for seg in segments:
            if negated and self.list_item(seg):
                found.append("normal")
            else:
                found.append(self.segment_status(seg, anatomies))
                negated = bool(self.pre.search(self.pseudo.sub(" ", seg)))
        if self._postoperative.search(clause):
            return "abnormal"  # "Esophagogastric anastomosis, unremarkable": the operation stays
        if len(segments) > 1 and self._verdict_only(segments[-1]):
            return "normal"  # "Pericardial thickness is 2 mm, normal."
        if len(segments) > 1 and self._closing_verdict(segments[-1]):
            # "Mediastinal structures, heart contour, size are normal": the verdict's bare subjects;
            # after "the lungs are clear" (its own subject) only items that say nothing
            own_subject = bool(self._mentions(segments[-1]))
            found = [st if self.has_own_assertion(seg) or (own_subject and self.says_something(seg)) else "normal"
                     for seg, st in zip(segments, found)]
        return max(found, key=RANK.__getitem__, default=None)

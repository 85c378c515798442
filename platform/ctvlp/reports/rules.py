"""Rule-based report parser: report -> per-anatomy text and label (1 abnormal, 0 normal, -1 unknown).

Pipeline, per report section (impression first, then findings, as fVLM concatenates them):

0. normalise (:mod:`ctvlp.reports.normalise`): keep the findings and impression of a report
   pasted whole with its headers, join line wraps inside sentences, spell out abbreviations and
   double negations ("s/p" -> "status post", "not without" -> "with"), correct one-edit typos;
1. sentences: split on ``.!?`` followed by whitespace, and on newlines ("3.5 cm" stays whole). A
   line labelled with an anatomy ("AORTA: Normal caliber. Scattered calcified plaque.") lends its
   label to its later sentences, and to unlabelled lines after it, that name no anatomy and no
   other structure (``lexicon.OTHER_STRUCTURES``);
2. clauses: hard split on ``; :`` and contrast words (but, however, whereas, although, except);
   soft split on commas, "and", "with", "without" only where the left part is already a
   statement (it has a predicate, a trigger or a finding word) and, for commas and "and", the
   right part is about an anatomy and says something of it. "The liver is enlarged and the
   spleen is normal" and "Normal lungs, dilated aorta" split; "The liver and spleen are normal"
   and "normal in size, contour, and attenuation" do not;
3. anatomies per clause from the lexicon (blockers masked, longest phrase first; a phrase may name
   several anatomies, "cardiopulmonary"; "lobe" is no lung in a clause about the thyroid or liver,
   ``lexicon.CLAIMED_BY_CONTEXT``); a clause that names none inherits the previous clause's
   anatomies ("..., with a 2 cm cyst"); a bare subject ("Liver:") is merged into the clause that
   follows it;
4. assertion per comma segment of a clause (NegEx-style, :func:`RuleReportParser.segment_status`):
   stability and pseudo-negation phrases are removed ("not appreciably changed", "unchanged");
   a pre-negation negates the rest of its segment, a post-negation the segment before it; a
   segment that still says something besides anatomy names, neutral words ("size", "shows")
   and measurements is ``abnormal`` ("Thoracic aorta is calcified, not dilated"); a hedge
   ("possible", "cannot be excluded") with no finding stated before it is ``uncertain``; a
   segment with a negation or a stability statement and nothing else is ``normal``
   ("Heart size is unchanged."). A list after a negated segment stays negated ("no nodule,
   consolidation or effusion", "no mass, nodule or infiltration was detected"). A closing verdict
   covers what it closes: a last segment that is only a normal verdict ("Pericardial thickness is
   2 mm, normal", "Trace pericardial fluid, within physiologic limits", "..., resolved") makes the
   clause normal, and one with a copula ("heart contour, size are normal") the bare list before it.
   A measurement at or beyond its normal limit (:mod:`ctvlp.reports.measure`: aortic diameter,
   cardiothoracic ratio, wall thickness; or the report's own reference range) is abnormal.

Output (decided, and matching fVLM's "impression-based" texts, shared/research/method.md 5.4):
an anatomy is abnormal (1) if any clause about it is abnormal; otherwise, if a clause about it is
uncertain, the uncertainty policy decides: ``abnormal`` (1, the default), ``unknown`` (-1: the
anatomy is left out of the losses, see :func:`ctvlp.data.codec.decode_sample`) or ``normal`` (0);
otherwise it is normal (0). The text is every clause about the anatomy in report order
(deduplicated); for a normal anatomy it is prefixed with the template
``"{anatomy} shows no significant abnormalities."``, which alone is the text of an anatomy the
report does not mention. So a text starts with the template exactly when its label is 0.

Why ``abnormal`` is the default policy: a hedged finding ("possible small effusion") is
something the radiologist saw; pairing the anatomy with "shows no significant abnormalities"
would teach the wrong text, and ``unknown`` drops the anatomy from every loss. It is also what
the parser did before the policy existed, and the LLM prompt's rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from ctvlp.reports import lexicon as L
from ctvlp.reports.measure import measured_abnormal, split_reference
from ctvlp.reports.normalise import normalise

NORMAL_TEMPLATE = "{anatomy} shows no significant abnormalities."
UNCERTAINTY_POLICIES: dict[str, int] = {"abnormal": 1, "unknown": -1, "normal": 0}

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_HARD_SPLIT = re.compile(
    r"\s*[;:]\s*|,?\s*\b(?:but|however|whereas|although|though|except|apart from|otherwise)\b,?\s*", re.I
)
_SOFT_SPLIT = re.compile(r",?\s+(?:and|with|without|while)\s+|,\s*", re.I)
_WORD = re.compile(r"[a-z][a-z-]*", re.I)
_STRIP_CHARS = re.compile(r"[\"'()\[\]{}]")
_MEASURE = re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm)\b", re.I)
_LABEL = re.compile(r"^\s*([A-Za-z][\w /&,-]{0,40}?)\s*:\s*(?=\S)")  # "AORTA: ..." at a line start
_RANK = {"abnormal": 3, "uncertain": 2, "normal": 1, None: 0}


@dataclass
class Clause:
    """One clause: its text, the anatomies it is about, and its assertion.

    ``status``: "abnormal", "uncertain", "normal", or None (the clause says nothing).
    """

    text: str
    anatomies: list[str]
    status: str | None
    inherited: bool = False


@dataclass
class Parsed:
    """A parsed report: ``labels``/``texts`` per anatomy, ``mentioned`` anatomies in report order."""

    texts: dict[str, str]
    labels: dict[str, int]
    mentioned: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, tuple[str, int]]:
        return {a: (self.texts[a], self.labels[a]) for a in self.texts}


class RuleReportParser:
    """Parse reports into per-anatomy texts and labels for a fixed, ordered anatomy list.

    Args:
        anatomies: the grouping's anatomy names (``spec.data.anatomies``); names missing from the
            lexicon are matched literally.
        lexicon: ``{anatomy: phrases}``, default :data:`ctvlp.reports.lexicon.ANATOMY_TERMS`.
        uncertainty: label of an anatomy whose only findings are hedged
            (``spec.ingest.report_uncertainty``): "abnormal" (1), "unknown" (-1) or "normal" (0).
    """

    def __init__(self, anatomies: list[str] | tuple[str, ...], lexicon: dict[str, tuple[str, ...]] | None = None,
                 uncertainty: str = "abnormal"):
        if not anatomies:
            raise ValueError("anatomies is empty: give the grouping's anatomy names")
        if uncertainty not in UNCERTAINTY_POLICIES:
            raise ValueError(f"uncertainty policy {uncertainty!r} (ingest.report_uncertainty) must be "
                             f"one of {sorted(UNCERTAINTY_POLICIES)}")
        self.anatomies = list(anatomies)
        self.uncertainty = uncertainty
        lex = dict(L.ANATOMY_TERMS if lexicon is None else lexicon)
        for name in self.anatomies:
            lex.setdefault(name, (name,))
        self._term_to_anatomy: dict[str, list[str]] = {}
        for a, terms in lex.items():  # a phrase may name several anatomies ("cardiopulmonary")
            for t in terms:
                names = self._term_to_anatomy.setdefault(re.sub(r"[\s-]+", " ", t.lower()), [])
                names += [a] if a not in names else []
        self._terms = L.phrase_regex(list(self._term_to_anatomy))
        self._blockers = L.phrase_regex(L.BLOCKERS)
        self._pre = L.phrase_regex(L.PRE_NEGATIONS)
        self._post = L.phrase_regex(L.POST_NEGATIONS)
        self._hedge_pre = L.phrase_regex(L.HEDGES_PRE)
        self._hedge_post = L.phrase_regex(L.HEDGES_POST)
        self._confident = L.phrase_regex(L.CONFIDENT)
        self._negated_hedges = L.phrase_regex(L.NEGATED_HEDGES)
        self._pseudo = L.phrase_regex(L.PSEUDO_NEGATIONS + L.STABILITY)
        self._findings = L.phrase_regex(L.FINDING_TERMS)
        self._others = L.phrase_regex(L.OTHER_STRUCTURES)
        self._landmark = L.phrase_regex(L.LANDMARKS)

    # -- detection ---------------------------------------------------------------------------
    def mentions(self, text: str, context: str | None = None) -> list[str]:
        """Anatomies named in ``text``, in order of first mention (blockers masked); ``context``
        (default ``text``: its sentence and line label) decides terms claimed by another organ."""
        masked = self._blockers.sub(lambda m: " " * len(m.group()), text)
        words = set(_WORD.findall((context or masked).lower()))
        found: list[str] = []
        for m in self._terms.finditer(masked):
            term = re.sub(r"[\s-]+", " ", m.group().lower())
            if words & set(L.CLAIMED_BY_CONTEXT.get(term, ())):
                continue  # "thyroid nodule in the right lobe"
            for anatomy in self._term_to_anatomy[term]:
                if anatomy not in found:
                    found.append(anatomy)
        return found

    def subjects(self, clause: str, context: str | None = None) -> list[str]:
        """Anatomies a clause is about: those named before a landmark preposition when that part
        names a subject ("Nodule abutting the aorta" is lung, "Lymph node adjacent to the aortic
        arch" nothing), else all it names."""
        m = self._landmark.search(clause)
        head = clause[: m.start()] if m else ""
        if head and (self.mentions(head, context) or self._content_words(head)):
            return self.mentions(head, context)
        return self.mentions(clause, context)

    def _content_words(self, text: str) -> list[str]:
        masked = self._terms.sub(" ", self._blockers.sub(" ", text))
        return [w for w in _WORD.findall(masked.lower()) if not _neutral(w)]

    def _says_something(self, text: str) -> bool:
        """A finding term or a content word (not anatomy, filler, neutral) in ``text``."""
        return bool(self._findings.search(text) or self._content_words(text))

    def _is_statement(self, text: str) -> bool:
        words = set(_WORD.findall(text.lower()))
        return bool(
            words & L.PREDICATE_WORDS
            or self._pre.search(text) or self._post.search(text) or self._pseudo.search(text)
            or self._hedge_pre.search(text) or self._hedge_post.search(text) or self._findings.search(text)
        )

    def _has_own_assertion(self, text: str) -> bool:
        """A verb, trigger, degree word or measurement of its own: not the tail of a negated list."""
        words = set(_WORD.findall(text.lower()))
        return bool(words & (L.PREDICATE_WORDS | L.DEGREE_WORDS) or _MEASURE.search(text)
                    or self._pre.search(text) or self._post.search(text)
                    or self._hedge_pre.search(text) or self._hedge_post.search(text))

    def _list_item(self, text: str) -> bool:
        """An item of a list begun before it: no assertion of its own, or an "or"/"nor" item whose
        only verb says the list exists ("no mass, nodule or infiltration was detected")."""
        if not self._has_own_assertion(text):
            return True
        if not re.search(r"\b(?:or|nor)\b", text, re.I):
            return False
        rest = " ".join(w for w in _WORD.findall(text) if w.lower() not in L.EXISTENCE_WORDS)
        return not self._has_own_assertion(rest)

    def _continues_negated_list(self, left: str, right: str) -> bool:
        # "no nodule, consolidation or emphysema": the negation covers every item of the list, so
        # a right part with no verb or trigger of its own stays in the negated clause (NegEx scope).
        if not self._pre.search(self._pseudo.sub(" ", left)):
            return False
        return self._list_item(right)

    def _affirmed(self, text: str) -> str:
        """The part of a segment no negation covers: before the first pre-negation (outside a
        post-negation phrase such as "is not seen"), after the last post-negation before it."""
        posts = list(self._post.finditer(text))
        pre = next((m for m in self._pre.finditer(text) if not any(  # "not" inside "is not seen"
            p.start() <= m.start() < p.end() and len(p.group()) >= len(m.group()) for p in posts)), None)
        lead = _WORD.findall(text[: posts[0].start()].lower()) if posts else ["-"]
        if all(w in L.FILLER_WORDS for w in lead) and (pre is None or posts[0].start() < pre.start()):
            pre = posts[0]  # a verdict before its noun negates what follows ("resolved consolidation")
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
        if not words or self._findings.search(rest) or set(words) & L.DEGREE_WORDS:
            return False
        return words[0] in L.VERDICT_PREPOSITIONS or (verdict.lower() == "normally" and len(words) == 1)

    def _shared_verdict(self, left: str, rest: str) -> bool:
        """``left`` is the first of a list of bare subjects that ``rest`` closes with one verdict:
        "Pleural effusion[, pneumothorax and pericardial effusion were not observed]"."""
        if self._has_own_assertion(left):
            return False
        first = next((t for t in _SOFT_SPLIT.split(rest) if self._has_own_assertion(t)), "")
        return self._closing_verdict(first)

    def _verdict_only(self, segment: str) -> bool:
        """Only a normal verdict: "normal", "all within normal limits", "resolved"."""
        rest = self._confident.sub(" ", self._post.sub(" ", segment))  # "likely physiologic"
        return rest != segment and not [w for w in _WORD.findall(rest.lower()) if w not in L.FILLER_WORDS]

    def _closing_verdict(self, segment: str) -> bool:
        """A copula and a post-negation that ends the segment: "size are normal", "were not seen"."""
        posts = list(self._post.finditer(segment))
        if not posts or self._pre.search(self._pseudo.sub(" ", segment[: posts[0].start()])):
            return False
        head = set(_WORD.findall(segment[: posts[-1].end()].lower()))
        return bool(head & L.COPULAS) and not self._says_something(segment[posts[-1].end() :])

    def segment_status(self, segment: str, anatomies: list[str] | None = None) -> str | None:
        """"abnormal", "uncertain", "normal" or None for one comma segment (module doc, step 4)."""
        if measured_abnormal(segment, anatomies or []):
            return "abnormal"
        text = self._negated_hedges.sub("no", split_reference(segment)[0])  # "(normal < 40 mm)" is no verdict
        stated = bool(self._pseudo.search(text))
        text = self._confident.sub(" ", self._pseudo.sub(" ", text))
        if self._hedge_post.search(text):
            return "uncertain"
        hedge = self._hedge_pre.search(text)
        if hedge:
            return "abnormal" if self._says_something(self._affirmed(text[: hedge.start()])) else "uncertain"
        affirmed = self._affirmed(text)
        if self._says_something(affirmed):
            return "abnormal"
        return "normal" if (affirmed != text or stated) else None

    def status(self, clause: str, anatomies: list[str] | None = None) -> str | None:
        """A clause's assertion: the strongest of its comma segments' (abnormal > uncertain >
        normal > None); the items of a negated list stay negated."""
        segments = [s for s in clause.split(",") if s.strip()]
        found: list[str | None] = []
        negated = False
        for seg in segments:
            if negated and self._list_item(seg):
                found.append("normal")
            else:
                found.append(self.segment_status(seg, anatomies))
                negated = bool(self._pre.search(self._pseudo.sub(" ", seg)))
        if len(segments) > 1 and self._verdict_only(segments[-1]):
            return "normal"  # "Pericardial thickness is 2 mm, normal."
        if len(segments) > 1 and self._closing_verdict(segments[-1]):
            # "Mediastinal structures, heart contour, size are normal": the verdict's bare subjects;
            # after "the lungs are clear" (its own subject) only items that say nothing
            own_subject = bool(self.mentions(segments[-1]))
            found = [st if self._has_own_assertion(seg) or (own_subject and self._content_words(seg)) else "normal"
                     for seg, st in zip(segments, found)]
        return max(found, key=_RANK.__getitem__, default=None)

    def polarity(self, clause: str) -> bool | None:
        """True = abnormal or uncertain, False = normal statement, None = no assertion."""
        st = self.status(clause, self.mentions(clause))
        return None if st is None else st != "normal"

    # -- splitting ---------------------------------------------------------------------------
    def split_clauses(self, sentence: str) -> list[str]:
        """Clauses of one sentence (see the module doc for where it splits)."""
        out: list[str] = []
        seps = [m.group() for m in _HARD_SPLIT.finditer(sentence)] + [""]
        for piece, sep in zip(_HARD_SPLIT.split(sentence), seps):
            piece = piece.strip(" ,.")
            if not piece:
                continue
            if sep.strip() == ":" and not self._has_own_assertion(piece) and not self._findings.search(piece):
                out.append(piece + ":")  # a label ("Lungs, heart and mediastinum:") for what follows
                continue
            cuts = list(_SOFT_SPLIT.finditer(piece))
            bounds = [0] + [c.start() for c in cuts] + [len(piece)]
            start = 0
            for i, m in enumerate(cuts):
                left = piece[start : m.start()]
                right = piece[m.end() : bounds[i + 2]]
                joiner = m.group().strip(" ,").lower()
                needs_anatomy = joiner in ("", "and")
                right_ok = not needs_anatomy or bool(
                    self.mentions(right) and (self._is_statement(right) or self._says_something(right)))
                if needs_anatomy and (self._continues_negated_list(left, right)
                                      or self._shared_verdict(left, piece[m.start() :])):
                    right_ok = False
                if self._is_statement(left) and right_ok:
                    out.append(left.strip(" ,"))
                    keep = joiner in ("with", "without", "while")  # "without" carries the negation
                    start = m.start() + (1 if m.group().startswith(",") else 0) if keep else m.end()
            out.append(piece[start:].strip(" ,"))
        return [c for c in out if c]

    def clauses(self, text: str) -> list[Clause]:
        """All clauses of a normalised report section with anatomies (inherited/merged) and status."""
        result: list[Clause] = []
        for sentence, context in self._sentences(text):
            prev: list[str] = []
            pending = ""  # a bare subject ("Liver") waiting for its predicate
            for raw in self.split_clauses(sentence):
                raw = f"{pending}: {raw}" if pending else raw
                pending = ""
                label = raw.endswith(":")
                raw = raw.rstrip(":")
                names = self.subjects(raw, context)
                st = self.status(raw, names or prev)
                if names and (label or (st is None and not self._is_statement(raw))):
                    pending = raw  # bare subject: merge into the next clause
                    continue
                inherited = not names
                names = names or prev
                if names:
                    result.append(Clause(raw, list(names), st, inherited))
                    prev = names
            if pending:
                result.append(Clause(pending, self.mentions(pending, context), None))
        return result

    def _sentences(self, text: str) -> list[tuple[str, str]]:
        """``(sentence, context)`` of a normalised section; a line labelled with an anatomy
        ("AORTA: Normal caliber. Calcified plaque.") prefixes its label to its later sentences that
        name no anatomy and no other structure; the context is the sentence and its line's label
        ("Thyroid: 1.5 cm left lobe nodule." is no lung)."""
        out: list[tuple[str, str]] = []
        for line in _STRIP_CHARS.sub("", text or "").splitlines():
            m = _LABEL.match(line)
            label = m.group(1) if m and self.mentions(m.group(1)) and not self._is_statement(m.group(1)) else ""
            for i, sentence in enumerate(s for s in _SENTENCE_SPLIT.split(line) if s.strip()):
                if label and i > 0 and not (self.mentions(sentence) or self._others.search(sentence)
                                            or self._blockers.search(sentence)):
                    sentence = f"{label}: {sentence}"
                out.append((sentence, f"{m.group(1) if m else ''} {sentence}"))
        return out

    # -- per-anatomy output ------------------------------------------------------------------
    def parse(self, findings: str | None, impression: str | None) -> Parsed:
        """Texts, labels (1 / 0 / -1 unknown) and the anatomies the report speaks about."""
        texts: dict[str, list[str]] = {a: [] for a in self.anatomies}
        status: dict[str, str | None] = dict.fromkeys(self.anatomies)
        mentioned: list[str] = []
        for section in (impression, findings):
            for clause in self.clauses(normalise(section)):
                for name in clause.anatomies:
                    if name not in texts:
                        continue
                    if name not in mentioned:
                        mentioned.append(name)
                    status[name] = max(status[name], clause.status, key=_RANK.__getitem__)
                    _append(texts[name], clause.text, clause.inherited)
        out_texts, labels = {}, {}
        for name in self.anatomies:
            st = status[name]
            labels[name] = 1 if st == "abnormal" else UNCERTAINTY_POLICIES[self.uncertainty] if st == "uncertain" else 0
            parts = list(dict.fromkeys(_sentence(p) for p in texts[name]))  # impression often repeats findings
            if labels[name] == 0:
                parts.insert(0, NORMAL_TEMPLATE.format(anatomy=name))
            out_texts[name] = " ".join(parts)
        return Parsed(out_texts, labels, mentioned)

    def __call__(self, findings: str | None, impression: str | None) -> dict[str, tuple[str, int]]:
        """``{anatomy: (text, label)}`` for every anatomy of the parser, in its order."""
        return self.parse(findings, impression).as_dict()


_NEUTRAL = L.FILLER_WORDS | L.NEUTRAL_WORDS


def _neutral(word: str) -> bool:
    """A filler or neutral word, or the plural of one ("diameters")."""
    return word in _NEUTRAL or (word.endswith("s") and word[:-1] in _NEUTRAL)


def _append(parts: list[str], text: str, inherited: bool) -> None:
    # An inherited clause ("with a small cyst") continues the anatomy's previous statement.
    if inherited and parts:
        parts[-1] = f"{parts[-1].rstrip('.')}, {text}"
    else:
        parts.append(text)


def _sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" ,.;:")
    return (text[:1].upper() + text[1:] + ".") if text else ""


@lru_cache(maxsize=8)
def _parser(anatomies: tuple[str, ...], uncertainty: str) -> RuleReportParser:
    return RuleReportParser(anatomies, uncertainty=uncertainty)


def rule_parser(anatomies: list[str] | tuple[str, ...], uncertainty: str = "abnormal") -> RuleReportParser:
    """The cached rule parser for a grouping and an uncertainty policy."""
    return _parser(tuple(anatomies), uncertainty)


def parse_report(
    findings: str | None, impression: str | None, anatomies: list[str] | tuple[str, ...],
    uncertainty: str = "abnormal",
) -> dict[str, tuple[str, int]]:
    """Split a report into ``{anatomy: (text, label)}`` with the rule parser (cached); label 1
    abnormal, 0 normal, -1 unknown (only under the ``unknown`` uncertainty policy)."""
    return rule_parser(anatomies, uncertainty)(findings, impression)

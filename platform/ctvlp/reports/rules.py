"""Rule-based report parser: report -> per-anatomy text and label (1 abnormal, 0 normal, -1 unknown).

Pipeline, per report section (impression first, then findings, as fVLM concatenates them):

0. normalise (:mod:`ctvlp.reports.normalise`): keep the findings and impression of a report
   pasted whole with its headers, join line wraps inside sentences, spell out abbreviations and
   double negations ("s/p" -> "status post", "not without" -> "with"), correct one-edit typos;
1. sentences: split on ``.!?`` followed by whitespace, and on newlines ("3.5 cm" stays whole). A
   line labelled with an anatomy ("AORTA: Normal caliber. Scattered calcified plaque.") lends its
   label to its later sentences that name no anatomy and no other structure
   (``lexicon.OTHER_STRUCTURES``);
2. clauses: hard split on ``; :`` and contrast words (but, however, whereas, although, except);
   soft split on commas, "and", "with", "without" only where the left part is already a
   statement (it has a predicate, a trigger or a finding word) and, for commas and "and", the
   right part is about an anatomy and says something of it. "The liver is enlarged and the
   spleen is normal" and "Normal lungs, dilated aorta" split; "The liver and spleen are normal"
   and "normal in size, contour, and attenuation" do not;
3. anatomies per clause from the lexicon (blockers masked, longest phrase first; a phrase may name
   several anatomies, "cardiopulmonary"; a phrase that usually means one organ is claimed by
   another the sentence names, ``lexicon.CLAIMED_BY_CONTEXT``: "effusion" is pleural but not in
   "heart enlarged with a small effusion", "lobe" no lung in "thyroid nodule in the right lobe";
   an anatomy after a landmark preposition is no subject, "lymph node adjacent to the aortic
   arch"); a clause that names none inherits the previous clause's anatomies ("..., with a 2 cm
   cyst"); a bare subject or label ("Liver:", "Lungs, heart and mediastinum:") is merged into the
   clause that follows it;
4. assertion of each clause (:mod:`ctvlp.reports.assertion`, NegEx-style, per comma segment):
   negation scoped to what it governs ("Thoracic aorta is calcified, not dilated" is abnormal),
   stability is no finding ("Heart size is unchanged." is normal), hedges are ``uncertain``,
   closing verdicts and negated lists cover their items, and a measurement beyond its normal
   limit (:mod:`ctvlp.reports.measure`) is abnormal.

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
from ctvlp.reports.assertion import RANK, SOFT_SPLIT, Assertion
from ctvlp.reports.normalise import normalise

NORMAL_TEMPLATE = "{anatomy} shows no significant abnormalities."
UNCERTAINTY_POLICIES: dict[str, int] = {"abnormal": 1, "unknown": -1, "normal": 0}

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_HARD_SPLIT = re.compile(
    r"\s*[;:]\s*|,?\s*\b(?:but|however|whereas|although|though|except|apart from|otherwise)\b,?\s*", re.I
)
_WORD = re.compile(r"[a-z][a-z-]*", re.I)
_STRIP_CHARS = re.compile(r"[\"'()\[\]{}]")
_LABEL = re.compile(r"^\s*([A-Za-z][\w /&,-]{0,40}?)\s*:\s*(?=\S)")  # "AORTA: ..." at a line start


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
        self.assertion = Assertion(self._terms, self._blockers, self.mentions)
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
        if head and (self.mentions(head, context) or self.assertion.content_words(head)):
            return self.mentions(head, context)
        return self.mentions(clause, context)

    def segment_status(self, segment: str, anatomies: list[str] | None = None) -> str | None:
        """"abnormal", "uncertain", "normal" or None for one comma segment (:mod:`ctvlp.reports.assertion`)."""
        return self.assertion.segment_status(segment, anatomies)

    def status(self, clause: str, anatomies: list[str] | None = None) -> str | None:
        """A clause's assertion, the strongest of its comma segments' (:mod:`ctvlp.reports.assertion`)."""
        return self.assertion.status(clause, anatomies)

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
            if sep.strip() == ":" and not self.assertion.has_own_assertion(piece) and not self.assertion.findings.search(piece):
                out.append(piece + ":")  # a label ("Lungs, heart and mediastinum:") for what follows
                continue
            cuts = list(SOFT_SPLIT.finditer(piece))
            bounds = [0] + [c.start() for c in cuts] + [len(piece)]
            start = 0
            for i, m in enumerate(cuts):
                left = piece[start : m.start()]
                right = piece[m.end() : bounds[i + 2]]
                joiner = m.group().strip(" ,").lower()
                needs_anatomy = joiner in ("", "and")
                right_ok = not needs_anatomy or bool(
                    self.mentions(right) and (self.assertion.is_statement(right) or self.assertion.says_something(right)))
                if needs_anatomy and (self.assertion.continues_negated_list(left, right)
                                      or self.assertion.shared_verdict(left, piece[m.start() :])):
                    right_ok = False
                if self.assertion.is_statement(left) and right_ok:
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
                if names and (label or (st is None and not self.assertion.is_statement(raw))):
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
            label = m.group(1) if m and self.mentions(m.group(1)) and not self.assertion.is_statement(m.group(1)) else ""
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
                    status[name] = max(status[name], clause.status, key=RANK.__getitem__)
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

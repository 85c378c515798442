"""Rule-based report parser: report -> per-anatomy text and a normal (0) / abnormal (1) label.

Pipeline, per report section (impression first, then findings, as fVLM concatenates them):

1. sentences: split on ``.!?`` followed by whitespace, and on newlines ("3.5 cm" stays whole);
2. clauses: hard split on ``; :`` and contrast words (but, however, whereas, although, except);
   soft split on commas, "and", "with", "without" only where the left part is already a
   statement (it has a predicate, a trigger or a finding word) and, for commas and "and", the
   right part is a statement about an anatomy too. "The liver is enlarged and the spleen is normal" splits;
   "The liver and spleen are normal" and "normal in size, contour, and attenuation" do not;
3. anatomies per clause from the lexicon (blockers masked, longest phrase first); a clause that
   names none inherits the previous clause's anatomies ("..., with a 2 cm cyst"); a bare subject
   ("Liver:") is merged into the clause that follows it;
4. polarity (NegEx-style, clause scope): uncertain mentions are abnormal, even when phrased with a
   negation ("cannot be excluded"); otherwise a clause with a negation trigger is a normal
   statement; otherwise a clause that says anything besides anatomy names is abnormal.

Output (decided, and matching fVLM's "impression-based" texts, shared/research/method.md 5.4):
abnormal = 1 iff any clause about the anatomy is abnormal. The text is every clause about the
anatomy in report order (deduplicated); for a normal anatomy it is prefixed with the template
``"{anatomy} shows no significant abnormalities."``, which alone is the text of an anatomy the
report does not mention. So a text starts with the template exactly when its label is 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ctvlp.reports import lexicon as L

NORMAL_TEMPLATE = "{anatomy} shows no significant abnormalities."

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_HARD_SPLIT = re.compile(
    r"\s*[;:]\s*|,?\s*\b(?:but|however|whereas|although|except|apart from|otherwise)\b,?\s*", re.I
)
_SOFT_SPLIT = re.compile(r",?\s+(?:and|with|without|while)\s+|,\s*", re.I)
_WORD = re.compile(r"[a-z][a-z-]*", re.I)
_STRIP_CHARS = re.compile(r"[\"'()\[\]{}]")


@dataclass
class Clause:
    """One clause: its text, the anatomies it is about, and its assertion (None = says nothing)."""

    text: str
    anatomies: list[str]
    abnormal: bool | None
    inherited: bool = False


class RuleReportParser:
    """Parse reports into per-anatomy texts and labels for a fixed, ordered anatomy list.

    Args:
        anatomies: the grouping's anatomy names (``spec.data.anatomies``); names missing from the
            lexicon are matched literally.
        lexicon: ``{anatomy: phrases}``, default :data:`ctvlp.reports.lexicon.ANATOMY_TERMS`.
    """

    def __init__(self, anatomies: list[str] | tuple[str, ...], lexicon: dict[str, tuple[str, ...]] | None = None):
        if not anatomies:
            raise ValueError("anatomies is empty: give the grouping's anatomy names")
        self.anatomies = list(anatomies)
        lex = dict(L.ANATOMY_TERMS if lexicon is None else lexicon)
        for name in self.anatomies:
            lex.setdefault(name, (name,))
        self._term_to_anatomy = {t.lower(): a for a, terms in lex.items() for t in terms}
        self._terms = L.phrase_regex(list(self._term_to_anatomy))
        self._blockers = L.phrase_regex(L.BLOCKERS)
        self._pre = L.phrase_regex(L.PRE_NEGATIONS)
        self._post = L.phrase_regex(L.POST_NEGATIONS)
        self._uncertain = L.phrase_regex(L.UNCERTAIN)
        self._pseudo = L.phrase_regex(L.PSEUDO_NEGATIONS)
        self._findings = L.phrase_regex(L.FINDING_TERMS)

    # -- detection ---------------------------------------------------------------------------
    def mentions(self, text: str) -> list[str]:
        """Anatomies named in ``text``, in order of first mention (blockers masked)."""
        masked = self._blockers.sub(lambda m: " " * len(m.group()), text)
        found: list[str] = []
        for m in self._terms.finditer(masked):
            anatomy = self._term_to_anatomy[re.sub(r"[\s-]+", " ", m.group().lower())]
            if anatomy not in found:
                found.append(anatomy)
        return found

    def _content_words(self, text: str) -> list[str]:
        masked = self._terms.sub(" ", self._blockers.sub(" ", text))
        return [w for w in _WORD.findall(masked.lower()) if w not in L.FILLER_WORDS]

    def _is_statement(self, text: str) -> bool:
        words = set(_WORD.findall(text.lower()))
        return bool(
            words & L.PREDICATE_WORDS
            or self._pre.search(text) or self._post.search(text)
            or self._uncertain.search(text) or self._findings.search(text)
        )

    def _continues_negated_list(self, left: str, right: str) -> bool:
        # "no nodule, consolidation or emphysema": the negation covers every item of the list, so
        # a right part with no verb or trigger of its own stays in the negated clause (NegEx scope).
        if not self._pre.search(self._pseudo.sub(" ", left)):
            return False
        has_own = set(_WORD.findall(right.lower())) & L.PREDICATE_WORDS
        return not (has_own or self._pre.search(right) or self._post.search(right) or self._uncertain.search(right))

    def polarity(self, clause: str) -> bool | None:
        """True = abnormal, False = normal statement, None = no assertion (only anatomy names)."""
        if self._uncertain.search(clause):
            return True
        rest = self._pseudo.sub(" ", clause)
        if self._pre.search(rest) or self._post.search(rest):
            return False
        if self._findings.search(clause) or self._content_words(clause):
            return True
        return None

    # -- splitting ---------------------------------------------------------------------------
    def split_clauses(self, sentence: str) -> list[str]:
        """Clauses of one sentence (see the module doc for where it splits)."""
        out: list[str] = []
        for piece in _HARD_SPLIT.split(sentence):
            piece = piece.strip(" ,.")
            if not piece:
                continue
            cuts = list(_SOFT_SPLIT.finditer(piece))
            start = 0
            for i, m in enumerate(cuts):
                left = piece[start : m.start()]
                nxt = cuts[i + 1].start() if i + 1 < len(cuts) else len(piece)
                right = piece[m.end() : nxt]
                joiner = m.group().strip(" ,").lower()
                needs_anatomy = joiner in ("", "and")
                right_ok = not needs_anatomy or (self.mentions(right) and self._is_statement(right))
                if needs_anatomy and self._continues_negated_list(left, right):
                    right_ok = False
                if self._is_statement(left) and right_ok:
                    out.append(left.strip(" ,"))
                    keep = joiner in ("with", "without", "while")  # "without" carries the negation
                    start = m.start() + (1 if m.group().startswith(",") else 0) if keep else m.end()
            out.append(piece[start:].strip(" ,"))
        return [c for c in out if c]

    def clauses(self, text: str) -> list[Clause]:
        """All clauses of a report section with anatomies (inherited/merged) and polarity."""
        result: list[Clause] = []
        for sentence in _SENTENCE_SPLIT.split(_STRIP_CHARS.sub("", text or "")):
            prev: list[str] = []
            pending = ""  # a bare subject ("Liver") waiting for its predicate
            for raw in self.split_clauses(sentence):
                raw = f"{pending}: {raw}" if pending else raw
                pending = ""
                names = self.mentions(raw)
                pol = self.polarity(raw)
                if names and pol is None and not self._is_statement(raw):
                    pending = raw  # bare subject: merge into the next clause
                    continue
                inherited = not names
                names = names or prev
                if names:
                    result.append(Clause(raw, list(names), pol, inherited))
                    prev = names
            if pending:
                result.append(Clause(pending, self.mentions(pending), None))
        return result

    # -- per-anatomy output ------------------------------------------------------------------
    def __call__(self, findings: str | None, impression: str | None) -> dict[str, tuple[str, int]]:
        """``{anatomy: (text, abnormal)}`` for every anatomy of the parser, in its order."""
        texts: dict[str, list[str]] = {a: [] for a in self.anatomies}
        abnormal = dict.fromkeys(self.anatomies, 0)
        for section in (impression, findings):
            for clause in self.clauses(section or ""):
                for name in clause.anatomies:
                    if name not in texts:
                        continue
                    if clause.abnormal:
                        abnormal[name] = 1
                    _append(texts[name], clause.text, clause.inherited)
        out: dict[str, tuple[str, int]] = {}
        for name in self.anatomies:
            parts = [_sentence(p) for p in texts[name]]
            parts = list(dict.fromkeys(parts))  # impression often repeats findings
            if not abnormal[name]:
                parts.insert(0, NORMAL_TEMPLATE.format(anatomy=name))
            out[name] = (" ".join(parts), abnormal[name])
        return out


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
def _parser(anatomies: tuple[str, ...]) -> RuleReportParser:
    return RuleReportParser(anatomies)


def parse_report(
    findings: str | None, impression: str | None, anatomies: list[str] | tuple[str, ...]
) -> dict[str, tuple[str, int]]:
    """Split a report into ``{anatomy: (text, abnormal 0/1)}`` with the rule parser (cached)."""
    return _parser(tuple(anatomies))(findings, impression)

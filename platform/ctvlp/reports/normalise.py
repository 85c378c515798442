"""Report text before the rule parser sees it: sections, line wraps, typos.

- :func:`report_sections`: a report pasted whole ("INDICATION: ? pneumothorax\\nFINDINGS: ...")
  keeps only its findings and impression (plus any text before the first header); indication,
  history, technique and comparison lines mention anatomies that the scan need not show.
- :func:`join_line_wraps`: a line break inside a sentence ("There is moderate\\ncardiomegaly.")
  is a space; a break after ``.!?:``, before a header, a bullet or a capitalised line after a
  content word stays a break.
- :func:`correct_typos`: a word of five letters or more that is one edit (insertion, deletion,
  substitution or transposition) from exactly one lexicon word, and is no lexicon word itself,
  is replaced by it ("cardiomegally", "plueral", "cleer"). The lexicon words are its single-word
  anatomy and finding terms plus ``lexicon.TYPO_WORDS``; ``lexicon.KNOWN_WORDS`` are never changed.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ctvlp.reports import lexicon as L

_HEADER = re.compile(
    r"^[ \t]*(?P<name>" + "|".join(re.escape(n) for n in sorted(L.REPORT_SECTIONS + L.OTHER_SECTIONS,
                                                                  key=len, reverse=True))
    + r")[ \t]*(?::|$)", re.I | re.M,
)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s")
# A line ending in one of these words continues on the next line whatever its case.
_CONTINUES = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "with", "without", "and", "or", "no", "not",
    "is", "are", "was", "were", "be", "by", "for", "from", "left", "right", "small", "mild",
    "moderate", "large", "both", "there", "as", "into", "than",
})
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")


def report_sections(text: str) -> str:
    """The findings and impression parts of ``text`` (all of it when it has no known header)."""
    heads = list(_HEADER.finditer(text))
    if not heads:
        return text
    keep = [text[: heads[0].start()]]
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        if m.group("name").lower() in L.REPORT_SECTIONS:
            keep.append(text[m.end() : end])
    return "\n".join(k.strip() for k in keep if k.strip())


def join_line_wraps(text: str) -> str:
    """Replace line breaks inside sentences by spaces (see the module doc for the rule)."""
    lines = [ln.strip() for ln in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if not line:
            out.append("")
            continue
        if out and out[-1] and _wrapped(out[-1], line):
            out[-1] = f"{out[-1]} {line}"
        else:
            out.append(line)
    return "\n".join(ln for ln in out if ln)


def _wrapped(prev: str, line: str) -> bool:
    if prev[-1] in ".!?:;" or _HEADER.match(line) or _BULLET.match(line):
        return False
    last = prev.split()[-1].lower().strip(",")
    return line[0].islower() or line[0].isdigit() or last in _CONTINUES or prev[-1] == ","


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    """Anatomy and finding words of the lexicon (the words a typo is corrected to)."""
    phrases: list[str] = [t for terms in L.ANATOMY_TERMS.values() for t in terms]
    phrases += list(L.FINDING_TERMS) + list(L.TYPO_WORDS)
    # Single-word phrases only: parts of phrases ("ground" of "ground glass") are common words.
    return frozenset(p.lower() for p in phrases if p.isalpha())


def _edits1(word: str) -> set[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    deletes = {a + b[1:] for a, b in splits if b}
    swaps = {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    subs = {a + c + b[1:] for a, b in splits if b for c in letters}
    inserts = {a + c + b for a, b in splits for c in letters}
    return deletes | swaps | subs | inserts


@lru_cache(maxsize=4096)
def _correction(word: str) -> str | None:
    vocab = _vocabulary()
    if len(word) < 5 or word in vocab or word in L.KNOWN_WORDS:
        return None
    hits = sorted(_edits1(word) & vocab)
    return hits[0] if len(hits) == 1 else None


def correct_typos(text: str) -> str:
    """``text`` with one-edit typos of lexicon words corrected (lower case where replaced)."""
    def fix(m: re.Match[str]) -> str:
        return _correction(m.group().lower()) or m.group()

    return _WORD.sub(fix, text)


def normalise(text: str | None) -> str:
    """Sections, then line wraps, then typos: the text the rule parser splits into sentences."""
    return correct_typos(join_line_wraps(report_sections(text or "")))

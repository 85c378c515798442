"""Report text before the rule parser sees it: sections, line wraps, abbreviations, typos.

- :func:`report_sections`: a report pasted whole ("INDICATION: ? pneumothorax\\nFINDINGS: ...")
  keeps only its findings and impression (plus any text before the first header, except an
  all-capitals title line such as "CT ANGIOGRAPHY CHEST FOR DISSECTION"); indication, history,
  technique and comparison lines mention anatomies that the scan need not show. In a report
  without a findings or impression header, such a section is its one line, and the lines after
  it are the findings ("INDICATION: ? PE\\nLungs clear."). A header starts a
  line ("IMPRESSION:", "Indication/History:") or, followed by a colon, a sentence
  ("... no effusion. IMPRESSION: ...").
- :func:`join_line_wraps`: a line break inside a sentence ("There is moderate\\ncardiomegaly.")
  is a space; a break after ``.!?:``, before a header, a bullet or a capitalised line after a
  content word stays a break. A short label line ("AORTA:") is joined to the line it labels.
- :func:`split_enumerations`: "1) Cardiomegaly 2) No effusion" or "1. ... 2. ..." on one line
  are separate items (a negation never reaches into the next one).
- :func:`expand_abbreviations`: terse reports' shorthand (:data:`ABBREVIATIONS`: "s/p" ->
  "status post", "c/w", "r/o", "w/o", "WNL", "nl", "vs.", "?PE" -> "possible PE"), double
  negations (:data:`DOUBLE_NEGATIONS`: "not without" -> "with"), "non-dilated" -> "not
  dilated" (:data:`NEGATABLE_ADJECTIVES`) and hyphenated prefixes ("post-esophagectomy",
  "normal-caliber") split into words.
- :func:`correct_typos`: a word of five letters or more that is one edit (insertion, deletion,
  substitution or transposition) from exactly one lexicon word, and is no lexicon word itself,
  is replaced by it ("cardiomegally", "plueral", "cleer"). The lexicon words are its single-word
  anatomy and finding terms plus ``lexicon.TYPO_WORDS``; ``lexicon.KNOWN_WORDS`` are never changed.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ctvlp.reports import lexicon as L

_NAMES = "|".join(re.escape(n) for n in sorted(L.REPORT_SECTIONS + L.OTHER_SECTIONS, key=len, reverse=True))
# "INDICATION:", "Clinical history / indication:", a header alone on its line ("IMPRESSION").
_NAME_LIST = rf"(?:{_NAMES})(?:[ \t]*(?:/|&|\band\b)[ \t]*(?:{_NAMES}))*"
_HEADER = re.compile(rf"^[ \t]*(?P<name>{_NAME_LIST})[ \t]*(?::|$)", re.I | re.M)
# Inside a line a header needs a colon and the end of a sentence before it.
_INLINE_HEADER = re.compile(rf"(?<=[.!?])[ \t]+(?P<name>{_NAME_LIST})[ \t]*:", re.I)
_TITLE = re.compile(r"^[^a-z.]*[A-Z][^a-z.]*$")  # a line in capitals without a full stop
_LABEL_LINE = re.compile(r"^[A-Za-z][\w /&,-]{0,40}:$")  # "AORTA:", "Lungs/pleura:"
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
    heads = sorted(list(_HEADER.finditer(text)) + list(_INLINE_HEADER.finditer(text)), key=lambda m: m.start())
    if not heads:
        return text
    preamble = [ln for ln in text[: heads[0].start()].splitlines() if not _TITLE.match(ln.strip())]
    keep = ["\n".join(preamble)]
    unheaded = not any(_is_report_section(m.group("name")) for m in heads)
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        if _is_report_section(m.group("name")):
            keep.append(text[m.end() : end])
        elif unheaded:  # "INDICATION: ? PE\nLungs clear.": the findings follow the indication's line
            keep.append(_after_first_line(text[m.end() : end]))
    return "\n".join(k.strip() for k in keep if k.strip())


def _after_first_line(body: str) -> str:
    """``body`` without its first non-empty line (the content of a one-line section)."""
    lines = body.lstrip(" \t").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines[1:])


def _is_report_section(name: str) -> bool:
    """A findings or impression header ("Findings/Impression" counts; "History/Indication" not)."""
    parts = re.split(r"\s*(?:/|&|\band\b)\s*", name.strip().lower())
    return any(p in L.REPORT_SECTIONS for p in parts)


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
    if _LABEL_LINE.match(prev) and not _HEADER.match(prev) and not _HEADER.match(line):
        return True  # "AORTA:" on its own line labels the next one
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


_ENUMERATOR = re.compile(r"(?:^|[ \t]+)\(?\d{1,2}[.)]\s+(?=[A-Z])", re.M)


def split_enumerations(text: str) -> str:
    """Each numbered item ("1)", "2.") of ``text`` on its own line, its number dropped."""
    return _ENUMERATOR.sub("\n", text).lstrip("\n")


# Abbreviations of terse reports, expanded before parsing regex
# (case-insensitive, whole words) -> replacement. "?PE" and "? pneumothorax" are questions: hedges.
ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    (r"\bs/p\b|\bstatus-post\b", "status post"), (r"\bc/w\b", "consistent with"),
    (r"\br/o\b", "rule out"), (r"\bw/o\b", "without"), (r"\bw/(?!o\b)\s*", "with "),
    (r"\bh/o\b", "history of"), (r"\bf/u\b", "follow-up"), (r"\bb/l\b|\bbilat\b", "bilateral"),
    (r"\bwnl\b", "within normal limits"), (r"\bnad\b", "no abnormality detected"), (r"\bnml\b", "normal"),
    (r"\bunrem\b", "unremarkable"), (r"\babnl\b", "abnormal"), (r"\bnl\b", "normal"), (r"\bneg\b", "negative"),
    (r"\bvs\b\.?", "versus"), (r"\bapprox\b\.?", "approximately"), (r"\be\.g\.|\bi\.e\.", ""),
    (r"\basc\b\.?", "ascending"), (r"\bdesc\b\.?", "descending"), (r"\bcan't\b", "cannot"),
    (r"(?<![\w?])\?\s*(?=[a-z])", "possible "),
)

# Double negations read as what they state ("not without emphysema" = with emphysema).
DOUBLE_NEGATIONS: tuple[tuple[str, str], ...] = (
    (r"\bnot without\b", "with"), (r"\bnot free (?:of|from)\b", "with"), (r"\bnot absent\b", "present"),
    (r"\bnot (?:entirely |completely |totally |quite )?(?:unremarkable|normal|clear)\b", "abnormal"),
    (r"\bnot unlikely\b", "possible"),
    (r"\bnot inconsistent with\b", "consistent with"), (r"\bnot (?:devoid of|lacking)\b", "with"),
    # a coronary calcium (Agatston) score of zero is no calcification; any other score is some
    (r"\b(?:coronary (?:artery )?)?(?:calcium|agatston)(?: calcium)? score(?: of| is| was|:|=)?\s*0\b(?![.,]\d)",
     "no coronary calcification"),
)

# Adjectives whose "non-"/"non" form denies a finding ("non-dilated aorta" = "not dilated aorta");
# other "non-" words keep their meaning as one word ("noncalcified nodule" is a nodule).
NEGATABLE_ADJECTIVES: tuple[str, ...] = (
    "dilated", "enlarged", "aneurysmal", "distended", "thickened", "obstructed", "obstructing",
)

_ABBREVIATIONS = [(re.compile(p, re.I), r) for p, r in ABBREVIATIONS + DOUBLE_NEGATIONS]
_NON = re.compile(r"\bnon-?(" + "|".join(NEGATABLE_ADJECTIVES) + r")\b", re.I)
_PREFIX = re.compile(r"\b(post|normal|well|status)-(?=[a-z])", re.I)


def expand_abbreviations(text: str) -> str:
    """``text`` with shorthand, double negations and negating prefixes spelt out (module doc)."""
    for pattern, repl in _ABBREVIATIONS:
        text = pattern.sub(repl, text)
    return _PREFIX.sub(r"\1 ", _NON.sub(r"not \1", text))


def normalise(text: str | None) -> str:
    """Sections, line wraps, abbreviations, then typos: the text the rule parser splits into sentences."""
    joined = split_enumerations(join_line_wraps(report_sections(text or "")))
    return correct_typos(expand_abbreviations(joined))

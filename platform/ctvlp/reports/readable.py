"""Can a parser read this report at all? Empty text and other languages, before any parsing.

A report the parser cannot read must never become "every anatomy normal" (issue 21): ingest
quarantines it as ``report_unparsed`` or writes it with every label unknown
(``ingest.report_unreadable``). Three cases, the first two decided here, before parsing:

- ``empty``: no word of two letters or more (".", "-", "N/A" is two words but says nothing: see
  :data:`_PLACEHOLDERS`);
- ``language``: the report is long enough to tell (:data:`MIN_WORDS_FOR_LANGUAGE` words) and
  `langdetect <https://pypi.org/project/langdetect/>`_ (a port of Google's language-detection,
  offline, profiles bundled, seeded for determinism) names a language outside the allowed list
  with probability >= 0.9, while fewer than half of its words are words the rule parser knows
  (short English reports are often misnamed "fr" or "it"; both tests must agree);
- ``no_anatomy``: decided by the caller from the parser's output (no clause about any anatomy of
  the grouping).

The reason strings hold fixed words and a language code only: never report text.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ctvlp.reports import lexicon as L

MIN_WORDS_FOR_LANGUAGE = 6
_WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)
_PLACEHOLDERS = frozenset({"na", "n/a", "none", "nil", "tbd", "pending", "see", "report", "text"})
_ENGLISH = frozenset("""
the a an and or of in on at to is are was were be been with without no not there this that
for from by as it its which than but also seen noted present small large mild moderate severe
left right both bilateral upper lower middle lobe size normal within limits new prior study
""".split())


@lru_cache(maxsize=1)
def _known_words() -> frozenset[str]:
    phrases = [t for terms in L.ANATOMY_TERMS.values() for t in terms] + list(L.FINDING_TERMS)
    phrases += list(L.PRE_NEGATIONS) + list(L.POST_NEGATIONS) + list(L.HEDGES_PRE) + list(L.HEDGES_POST)
    phrases += list(L.STABILITY) + list(L.TYPO_WORDS)
    words = {w for p in phrases for w in re.split(r"[\s-]+", p.lower()) if w}
    return frozenset(words | L.FILLER_WORDS | L.NEUTRAL_WORDS | L.PREDICATE_WORDS | L.DEGREE_WORDS | _ENGLISH)


def detect_language(text: str) -> tuple[str, float]:
    """``(ISO 639-1 code, probability)`` of the most likely language (langdetect, seed 0)."""
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect samples n-grams at random: fix it for reproducible labels
    try:
        best = detect_langs(text)[0]
    except LangDetectException:
        return "", 0.0
    return best.lang, float(best.prob)


def unreadable_reason(findings: str | None, impression: str | None,
                      languages: tuple[str, ...] | list[str] = ("en",)) -> str | None:
    """``"empty"``, ``"language <code>"`` or None (readable as far as this module can tell)."""
    text = f"{findings or ''}\n{impression or ''}"
    words = [w.lower() for w in _WORD.findall(text)]
    if not [w for w in words if w not in _PLACEHOLDERS]:
        return "empty"
    if len(words) < MIN_WORDS_FOR_LANGUAGE:
        return None
    known = sum(w in _known_words() for w in words) / len(words)
    if known >= 0.5:
        return None
    lang, prob = detect_language(text)
    if lang and lang not in languages and prob >= 0.9:
        return f"language {lang}"
    return None

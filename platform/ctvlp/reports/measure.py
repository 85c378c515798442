"""Measurements in a report segment against normal limits (LABELS.md: "a measurement beyond normal"
is abnormal even when no adjective says so).

A segment's lengths ("4.7 cm", "36 mm", "45x38 mm") and ratios ("cardiothoracic ratio 0.62",
"CTR 55%") are compared with the limit of what they measure (:data:`LIMITS`, picked by anatomy
and the words of the segment) or, when the segment states one, with the report's own reference
range ("normal < 40 mm", "(<4.0 cm)", "normal range 0.4-0.5", "up to 5 mm"). A reference range is
masked out of the text before anything else reads it, so its "normal" is no verdict and its
number no measurement ("Asc aorta 43 mm (normal <40 mm)" is abnormal, "... 36 mm ..." is not).
A value the report itself calls "upper limits of normal" is normal whatever the default limit.

:func:`measured_abnormal` answers True (a value at or beyond its limit), False (values measured,
all within limits) or None (nothing this module measures).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUM = r"\d+(?:\.\d+)?|\.\d+"
# "45x38 mm" and "4.5 x 3.8 cm": every number before the unit takes it.
_LENGTH = re.compile(rf"((?:(?:{_NUM})\s*[x×*]\s*)*(?:{_NUM}))\s*(mm|cm)\b", re.I)
_RATIO = re.compile(rf"(?:cardio[\s-]?thoracic\s+(?:ratio|index)|\bctr\b)\D{{0,30}}?({_NUM})\s*(%?)", re.I)
_REFERENCE = re.compile(
    r"(?P<pre>\b(?:normal|nl|reference|ref|uln|upper\s+limits?\s+of\s+normal)\b(?:\s+(?:range|value|values|"
    r"limit|limits|is|are|being|of|for\s+age))*\s*[:=]?\s*)?"
    rf"(?:(?P<op><=|≤|<|\bup\s+to\b|\bless\s+than\b|\bunder\b|\bbelow\b)\s*(?P<val>{_NUM})"
    rf"|(?P<lo>{_NUM})\s*(?:-|–|\bto\b)\s*(?P<hi>{_NUM})|(?P<bare>{_NUM}))\s*(?P<unit>mm|cm|%)?",
    re.I,
)
# The author's own verdict that a value is at the limit but normal ("upper limits of normal").
_AT_LIMIT = re.compile(r"\bupper\s+limits?\s+of\s+normal\b|\b(?:upper|high|top)[\s-]+normal\b", re.I)


@dataclass(frozen=True)
class Limit:
    """Values of ``anatomy`` at or above ``upper`` (mm, or a ratio) are abnormal, in a segment
    that matches ``words`` (None: any segment about the anatomy)."""

    anatomy: str
    kind: str  # "length" | "ratio"
    upper: float
    words: re.Pattern[str] | None = None
    doc: str = ""


def _words(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.I)


# First match wins, so specific properties come before an anatomy's general one.
LIMITS: tuple[Limit, ...] = (
    Limit("heart", "ratio", 0.5, None, "cardiothoracic ratio >= 0.5: cardiomegaly"),
    Limit("heart", "length", 4.0, _words(r"pericardi.*\bthick|\bthick.*pericardi"),
          "pericardial thickness >= 4 mm: thickened pericardium"),
    Limit("heart", "length", 12.0, _words(r"\bseptum\b|\bseptal\b|ventricular\s+wall|myocardi"),
          "septal or left ventricular wall thickness >= 12 mm: hypertrophy"),
    Limit("esophagus", "length", 5.0, _words(r"\bwall\b|\bthick"), "esophageal wall >= 5 mm: thickened"),
    Limit("aorta", "length", 30.0, _words(r"\b(?:abdominal|infrarenal|suprarenal|juxtarenal)\b(?!.*"
                                           r"\b(?:ascending|root|arch|thoracic|descending)\b)"),
          "abdominal aorta >= 30 mm: aneurysm"),
    Limit("aorta", "length", 40.0, None, "thoracic aorta (root, ascending, arch, descending) >= 40 mm: dilated"),
)


def split_reference(text: str) -> tuple[str, list[tuple[float, bool, str]]]:
    """``(text with reference ranges blanked, [(limit, inclusive, unit)])``; ``inclusive``: the
    limit itself is normal ("up to 40 mm", "20-40 mm"); unit "mm" (cm converted), "ratio"."""
    limits: list[tuple[float, bool, str]] = []

    def blank(m: re.Match[str]) -> str:
        op, unit = re.sub(r"\s+", " ", (m.group("op") or "").lower()), (m.group("unit") or "").lower()
        if not m.group("pre") and op not in ("<", "<=", "≤"):
            return m.group(0)  # "2-3 mm", "up to 4.6 cm" alone are measurements, not references
        value = float(m.group("val") or m.group("hi") or m.group("bare"))
        inclusive = op in ("", "<=", "≤", "up to")
        if unit == "%":
            value, unit = value / 100.0, "ratio"
        elif unit in ("mm", "cm"):
            value, unit = value * (10.0 if unit == "cm" else 1.0), "mm"
        else:
            unit = "ratio" if value < 1.0 else "mm"  # "(normal < 0.50)"; a bare length is in mm
        limits.append((value, inclusive, unit))
        return " " * len(m.group(0))

    return _REFERENCE.sub(blank, text), limits


def lengths_mm(text: str) -> list[float]:
    """Every length in ``text`` in mm ("4.5 x 3.8 cm" -> [45.0, 38.0])."""
    out = []
    for nums, unit in _LENGTH.findall(text):
        scale = 10.0 if unit.lower() == "cm" else 1.0
        out += [float(n) * scale for n in re.findall(_NUM, nums)]
    return out


def ratios(text: str) -> list[float]:
    """Cardiothoracic ratios in ``text`` ("0.62", ".62", "62%" -> 0.62)."""
    return [float(v) / (100.0 if pct or float(v) > 1.0 else 1.0) for v, pct in _RATIO.findall(text)]


def measured_abnormal(text: str, anatomies: list[str] | tuple[str, ...]) -> bool | None:
    """True: a measurement of one of ``anatomies`` in ``text`` is at or beyond its limit; False:
    measured and within limits; None: nothing measured (see the module doc)."""
    masked, refs = split_reference(text)
    if _AT_LIMIT.search(masked):
        return False
    verdicts: list[bool] = []
    for kind, values in (("ratio", ratios(masked)), ("length", lengths_mm(_RATIO.sub(" ", masked)))):
        if not values:
            continue
        limit = next((lim for lim in LIMITS if lim.anatomy in anatomies and lim.kind == kind
                      and (lim.words is None or lim.words.search(masked))), None)
        stated = [r for r in refs if r[2] == ("ratio" if kind == "ratio" else "mm")]
        if stated:
            upper, inclusive, _ = stated[0]
            verdicts += [v > upper if inclusive else v >= upper for v in values]
        elif limit is not None:
            verdicts += [v >= limit.upper for v in values]
    return any(verdicts) if verdicts else None

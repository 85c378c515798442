"""Score a report parser on a labelled set (``tests/ctvlp/reports/labelled/``, LABELS.md there).

A labelled set is a TSV ``text  <anatomy>...`` whose cells are ``A`` (abnormal), ``N`` (normal),
``U`` (a hedged finding) or ``-`` (not mentioned); ``\\n`` in a text is a line break. Each item is
given to the parser as a whole report (``findings`` = the text, no impression), as a report with
its section headers would be. Per anatomy:

- abnormal recall = items predicted 1 / items expected ``A`` (plus ``U`` under the abnormal policy);
- normal specificity = items predicted 0 / items expected ``N`` (plus ``U`` under the normal policy);
- false abnormal on ``-`` = items predicted 1 / items that do not mention the anatomy.

Under the ``unknown`` policy ``U`` cells are scored as "predicted -1" and reported as their own rate.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

ParseFn = Callable[[str | None, str | None], dict[str, tuple[str, int]]]


def read_labelled(path: str | Path) -> list[dict[str, str]]:
    """Rows of a labelled TSV as ``{"text": ..., anatomy: code}`` (``\\n`` unescaped)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for i, r in enumerate(rows, start=2):
        bad = {k: v for k, v in r.items() if k != "text" and v not in ("A", "N", "U", "-")}
        if bad:
            raise ValueError(f"{path} line {i}: codes must be A, N, U or -, got {bad}")
        r["text"] = r["text"].replace("\\n", "\n")
    return rows


def _expected(code: str, policy: str) -> int | None:
    """Expected label of a cell: 1, 0, -1 (unknown) or None (not mentioned)."""
    if code == "U":
        return {"abnormal": 1, "normal": 0, "unknown": -1}[policy]
    return {"A": 1, "N": 0, "-": None}[code]


def score(parse: ParseFn, rows: list[dict[str, str]], anatomies: list[str],
          policy: str = "abnormal") -> dict[str, dict[str, float | int]]:
    """Per-anatomy figures: ``{anatomy: {recall, num_abnormal, specificity, num_normal,
    false_abnormal, num_unmentioned, unknown_ok, num_unknown}}`` (rates are None without items)."""
    counts = {a: {"tp": 0, "pos": 0, "tn": 0, "neg": 0, "fp_none": 0, "none": 0, "unk_ok": 0, "unk": 0}
              for a in anatomies}
    for row in rows:
        out = parse(row["text"], None)
        for a in anatomies:
            want, got, c = _expected(row[a], policy), int(out[a][1]), counts[a]
            if want == 1:
                c["pos"] += 1
                c["tp"] += got == 1
            elif want == 0:
                c["neg"] += 1
                c["tn"] += got == 0
            elif want == -1:
                c["unk"] += 1
                c["unk_ok"] += got == -1
            else:
                c["none"] += 1
                c["fp_none"] += got == 1
    return {a: _rates(c) for a, c in counts.items()}


def _rates(c: dict[str, int]) -> dict[str, float | int | None]:
    def rate(num: int, den: int) -> float | None:
        return round(num / den, 4) if den else None

    return {"recall": rate(c["tp"], c["pos"]), "num_abnormal": c["pos"],
            "specificity": rate(c["tn"], c["neg"]), "num_normal": c["neg"],
            "false_abnormal": rate(c["fp_none"], c["none"]), "num_unmentioned": c["none"],
            "unknown_ok": rate(c["unk_ok"], c["unk"]), "num_unknown": c["unk"]}


def errors(parse: ParseFn, rows: list[dict[str, str]], anatomies: list[str],
           policy: str = "abnormal") -> list[tuple[str, str, str, int]]:
    """``(text, anatomy, expected code, predicted label)`` of every wrong cell (for debugging)."""
    out = []
    for row in rows:
        pred = parse(row["text"], None)
        for a in anatomies:
            want, got = _expected(row[a], policy), int(pred[a][1])
            if (want is None and got == 1) or (want is not None and want != got):
                out.append((row["text"], a, row[a], got))
    return out

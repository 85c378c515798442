"""ctvlp.eval.tables: percent formatting and the paper-layout Markdown tables."""

from __future__ import annotations

import math

import pytest

from ctvlp.eval.metrics import evaluate, frames_from_arrays
from ctvlp.eval.tables import anatomy_markdown, auc_with_ci, disease_markdown, markdown_table, pct, summary_line


@pytest.mark.parametrize(("value", "text"), [(0.8123, "81.2"), (1.0, "100.0"), (math.nan, "-"), (None, "-")])
def test_pct(value, text):
    assert pct(value) == text


def test_auc_with_ci_and_markdown_escaping():
    assert auc_with_ci(0.8, 0.75, 0.86) == "80.0 [75.0, 86.0]"
    assert auc_with_ci(0.8, math.nan, math.nan) == "80.0"
    md = markdown_table(["a", "b"], [["x|y", "1"], ["Average", ""]], bold_last=True)
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |", "| **Average** |  |"]


def test_tables_like_the_paper():
    # d1: labels [0,0,1,1], scores [0.1,0.4,0.35,0.8] -> pairs (0.35>0.1, 0.35<0.4, 0.8>both) = 3/4.
    # d2 is single-class -> listed, not averaged.
    lab, sco = frames_from_arrays(["a", "b", "c", "d"], ["d1", "d2"],
                                  [[0, 0], [0, 0], [1, 0], [1, 0]], [[0.1, 0.5], [0.4, 0.5], [0.35, 0.5], [0.8, 0.5]])
    res = evaluate(lab, sco, {"d1": "liver", "d2": "spleen"}, n_bootstrap=0)
    md = disease_markdown(res)
    assert "| liver | d1 | 4 (2/2) | 0 | 75.0 |" in md
    assert "| spleen | d2 | 4 (0/4) | 0 | - |" in md
    assert "| **Average** | **1 diseases** |" in md
    assert "Single class in the evaluated set (no AUC, not in the macro mean): d2." in md
    amd = anatomy_markdown(res)
    assert "| liver | 1 |" in amd and "spleen" not in amd
    assert summary_line(res).startswith("macro AUC 75.0 over 1/2 diseases")

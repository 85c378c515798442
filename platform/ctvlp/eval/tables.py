"""Markdown renderings of ``ctvlp.eval.metrics.EvalResult``, laid out like the paper's tables.

Per-disease = paper Table 10 (anatomy, abnormality, SE, SP, ACC, AUC; ACC there is balanced
accuracy) plus the CT-RATE columns (accuracy, weighted F1, precision) and the AUC's bootstrap CI.
Per-anatomy = paper Table 2 (SE, SP, AUC averaged over each anatomy's diseases). Numbers are in
percent with one decimal, as in the paper. Markdown is hand-rendered (a dozen lines) rather than
through ``DataFrame.to_markdown``, which would add the ``tabulate`` dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # runtime import would be circular: metrics imports this module
    from ctvlp.eval.metrics import EvalResult


def pct(value) -> str:
    """0.8123 -> '81.2'; NaN/None -> '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * float(value):.1f}"


def auc_with_ci(auc, low, high) -> str:
    """'81.2 [75.0, 86.9]' (percent), or just the AUC when there is no CI."""
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return pct(auc)
    return f"{pct(auc)} [{pct(low)}, {pct(high)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], bold_last: bool = False) -> str:
    """GitHub-flavoured Markdown table from already formatted cells (last row bold if asked)."""
    body = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    if bold_last and body:
        body[-1] = [f"**{c}**" if c else c for c in body[-1]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def _macro_cells(result: EvalResult) -> dict[str, str]:
    m = result.summary["macro"]
    ci = result.summary.get("macro_auc_ci") or [None, None]
    cells = {k: pct(m[k]) for k in m}
    cells["auc"] = auc_with_ci(m["auc"], ci[0], ci[1])
    return cells


def disease_rows(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Per-disease table (paper Table 10 layout) as (header, rows); the last row is the macro mean."""
    t = result.per_disease
    has_anatomy = "anatomy" in t.columns
    header = (["Anatomy"] if has_anatomy else []) + [
        "Disease", "n (pos/neg)", "skipped", "AUC [95% CI]", "SE", "SP", "ACC", "bal. ACC", "F1 (w)", "Prec", "t",
    ]
    rows = []
    for disease, r in t.iterrows():
        cells = [str(disease), f"{r.n_evaluated} ({r.n_positive}/{r.n_negative})", str(r.n_skipped),
                 auc_with_ci(r.auc, r.auc_ci_low, r.auc_ci_high), pct(r.sensitivity), pct(r.specificity),
                 pct(r.accuracy), pct(r.balanced_accuracy), pct(r.f1_weighted), pct(r.precision),
                 "-" if math.isnan(r.threshold) else f"{r.threshold:.3f}"]
        rows.append(([str(r.anatomy)] if has_anatomy else []) + cells)
    m = _macro_cells(result)
    avg = ["Average", f"{result.summary['num_included']} diseases", "", m["auc"], m["sensitivity"],
           m["specificity"], m["accuracy"], m["balanced_accuracy"], m["f1_weighted"], m["precision"], ""]
    rows.append(([""] if has_anatomy else []) + avg)
    return header, rows


def anatomy_rows(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Per-anatomy table (paper Table 2 layout) as (header, rows); the last row is the macro mean
    over diseases (as the paper's 'Average'). Empty when the result has no anatomy map."""
    if result.per_anatomy is None:
        return [], []
    header = ["Anatomy", "diseases", "SE", "SP", "bal. ACC", "AUC", "ACC", "F1 (w)", "Prec"]
    rows = [[str(a), str(int(r.num_diseases)), pct(r.sensitivity), pct(r.specificity), pct(r.balanced_accuracy),
             pct(r.auc), pct(r.accuracy), pct(r.f1_weighted), pct(r.precision)]
            for a, r in result.per_anatomy.iterrows()]
    m = _macro_cells(result)
    rows.append(["Average (over diseases)", str(result.summary["num_included"]), m["sensitivity"],
                 m["specificity"], m["balanced_accuracy"], m["auc"], m["accuracy"], m["f1_weighted"], m["precision"]])
    return header, rows


def disease_markdown(result: EvalResult) -> str:
    """Per-disease Markdown table followed by the exclusion notes."""
    return markdown_table(*disease_rows(result), bold_last=True) + "\n\n" + notes_markdown(result)


def anatomy_markdown(result: EvalResult) -> str:
    """Per-anatomy Markdown table ('' without an anatomy map)."""
    header, rows = anatomy_rows(result)
    return markdown_table(header, rows, bold_last=True) if header else ""


def note_lines(result: EvalResult) -> list[str]:
    """Which diseases were left out of the macro means and why; skipped-scan counts."""
    s = result.summary
    notes = [f"Protocol: {s['protocol']}; SE/SP/ACC/F1/Prec at the ROC point nearest (0, 1) on a 100-step grid."]
    if s["single_class"]:
        notes.append("Single class in the evaluated set (no AUC, not in the macro mean): "
                     f"{', '.join(s['single_class'])}.")
    if s["no_scans"]:
        notes.append(f"No evaluated scans: {', '.join(s['no_scans'])}.")
    if s["no_threshold"]:
        notes.append(f"Single class on validation (no held-out threshold): {', '.join(s['no_threshold'])}.")
    if s["skipped_scans"]:
        counts = ", ".join(f"{d} {n}" for d, n in s["skipped_scans"].items())
        notes.append(f"Scans skipped (not evaluated): {counts}.")
    return notes


def notes_markdown(result: EvalResult) -> str:
    return "\n".join(f"- {n}" for n in note_lines(result))


def summary_line(result: EvalResult) -> str:
    """One line for logs: 'macro AUC 81.2 [75.0, 86.9] over 20 diseases (...)'."""
    m = _macro_cells(result)
    s = result.summary
    return (f"macro AUC {m['auc']} over {s['num_included']}/{s['num_diseases']} diseases; "
            f"SE {m['sensitivity']} SP {m['specificity']} ACC {m['accuracy']} "
            f"F1 {m['f1_weighted']} Prec {m['precision']}")

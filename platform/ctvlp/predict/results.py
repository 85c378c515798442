"""The predictor's results table: one row per scan, written as CSV by the CLI and ``jobs/predict.py``.

Columns: ``VolumeName`` (the scan's name), ``scan`` (as given), ``status`` (``ok`` / ``rejected``),
``reason`` and ``detail`` (ingest's quarantine code for a refused scan), ``seconds`` (preparing the
scan), then one column per disease holding its probability (empty: anatomy absent) and one
``<disease> (call)`` column holding 1 / 0 (empty: no threshold in the export, or not scored). The
probability columns read straight into ``python -m ctvlp.eval.metrics --scores``
(after dropping the other columns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ctvlp.predict.predictor import Prediction
from ctvlp.predict.scan import ScanRejected


def result_row(scan: Any, outcome: Prediction | ScanRejected, diseases: Sequence[str]) -> dict[str, Any]:
    """One table row for ``scan``'s prediction or refusal."""
    row: dict[str, Any] = {"scan": str(scan)}
    if isinstance(outcome, ScanRejected):
        row.update(VolumeName=outcome.scan, status="rejected", reason=outcome.reason, detail=outcome.detail)
        return row
    row.update(VolumeName=outcome.study_id, status="ok", reason="", detail="",
               seconds=round(float(outcome.meta.get("prepare_s", math.nan)), 3))
    for d in diseases:
        p, call = outcome.probabilities[d], outcome.calls.get(d)
        row[d] = p if math.isfinite(p) else None
        row[f"{d} (call)"] = None if call is None else int(call)
    return row


def write_results(path: str | Path, rows: list[dict[str, Any]], diseases: Sequence[str]) -> pd.DataFrame:
    """Write the rows as CSV (columns in the documented order); returns the table."""
    columns = ["VolumeName", "scan", "status", "reason", "detail", "seconds",
               *[c for d in diseases for c in (d, f"{d} (call)")]]
    table = pd.DataFrame(rows).reindex(columns=columns)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, na_rep="")
    return table

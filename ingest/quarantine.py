"""Quarantine: every input that does not become a sample lands here, with one reason code.

A quarantine row holds ``study_id``, ``split``, ``reason`` (a code from :data:`REASONS`) and a
short ``detail`` made of numbers and fixed words only (shapes, spacings, exception type). Report
text, patient identifiers and object paths never enter it (issue 5, item 6). The codes, the
exception carrying one and the exception -> (reason, detail) mapping live in
``ctvlp.transforms.reasons``, shared with ``ctvlp.predict`` (which refuses bad scans with them).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

# One home for the codes and the mapping (the predictor refuses scans with the same ones).
from ctvlp.transforms.reasons import REASONS, QuarantineError, classify

__all__ = ["REASONS", "SCHEMA", "QuarantineError", "classify", "row", "to_table"]

SCHEMA = pa.schema(
    [
        ("study_id", pa.string()),
        ("split", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


def row(study_id: str, split: str, reason: str, detail: str = "") -> dict[str, Any]:
    if reason not in REASONS:
        raise ValueError(f"unknown quarantine reason {reason!r}")
    return {"study_id": study_id, "split": split, "reason": reason, "detail": detail}


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)

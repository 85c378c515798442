"""Quarantine: every input that does not become a sample lands here, with one reason code.

A quarantine row holds ``study_id``, ``split``, ``reason`` (a code from :data:`REASONS`) and a
short ``detail`` made of numbers and fixed words only (shapes, spacings, exception type). Report
text, patient identifiers and object paths never enter it (issue 5, item 6): details are built
here from facts, and exception messages are scrubbed of the study's URIs and patient id.
"""

from __future__ import annotations

import gzip
import re
import zlib
from typing import Any

import pyarrow as pa

# Reason code -> what it means (the summary prints this table).
REASONS: dict[str, str] = {
    "unreadable_object": "the image/mask object could not be read from storage",
    "truncated_gzip": "the gzip stream of a .nii.gz ends early or is corrupt",
    "bad_format": "bytes are neither NIfTI nor a readable DICOM series",
    "not_3d": "the image is not a 3D volume",
    "non_finite": "the image holds NaN or inf voxels",
    "not_ct": "intensities are not CT Hounsfield units (or modality is not CT)",
    "absurd_spacing": "voxel spacing outside (0.1, 20) mm or non-finite",
    "empty_mask": "the mask has none of the grouping's anatomies",
    "misaligned_mask": "the mask's shape or affine differs from the image's",
    "missing_mask": "no mask supplied and segmentation is off",
    "missing_report": "no findings and no impression text",
    "duplicate_study_id": "the study id appears earlier in the manifest",
    "processing_error": "an unexpected error while processing (see detail)",
}

SCHEMA = pa.schema(
    [
        ("study_id", pa.string()),
        ("split", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


class QuarantineError(Exception):
    """Raised inside the CPU stage for a bad input; caught per study and turned into a row."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}; known: {sorted(REASONS)}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "<redacted>")
    text = re.sub(r"(s3://|/)[^\s'\"]+", "<path>", text)  # any path-like token
    return text[:200]


def classify(exc: BaseException, secrets: list[str] = ()) -> tuple[str, str]:
    """Map an exception from decoding/processing to ``(reason, detail)``.

    ``QuarantineError`` carries its reason; errors from ``ctvlp.transforms`` carry a ``reason``
    attribute when they are validation errors; gzip/zlib/EOF errors mean a truncated stream;
    storage errors mean an unreadable object. Anything else is ``processing_error`` with the
    exception type, so that a new failure kind is visible instead of silently renamed.
    """
    detail = _scrub(str(exc), list(secrets))
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason in REASONS:
        return reason, getattr(exc, "detail", None) and _scrub(exc.detail, list(secrets)) or detail
    if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error)):
        return "truncated_gzip", f"{type(exc).__name__}: {detail}"
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return "unreadable_object", type(exc).__name__
    return "processing_error", f"{type(exc).__name__}: {detail}"


def row(study_id: str, split: str, reason: str, detail: str = "") -> dict[str, Any]:
    if reason not in REASONS:
        raise ValueError(f"unknown quarantine reason {reason!r}")
    return {"study_id": study_id, "split": split, "reason": reason, "detail": detail}


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)

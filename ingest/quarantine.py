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

# Reason code -> what it means (the summary prints this table). The first eight are the ``kind``
# codes of ``ctvlp.transforms.validate.VolumeError``, used unchanged.
REASONS: dict[str, str] = {
    "unreadable": "the object could not be read from storage or decoded as NIfTI/DICOM",
    "truncated": "the gzip stream or voxel data ends early",
    "not_3d": "the image is not a 3D volume",
    "nonfinite": "the image holds NaN or inf voxels",
    "not_ct": "modality is not CT, or intensities are not plausible Hounsfield units",
    "bad_spacing": "voxel spacing outside [0.1, 20] mm (zero, negative or huge), or inconsistent slice spacing",
    "empty_mask": "the mask has none of the grouping's anatomies",
    "mask_mismatch": "the mask's shape or affine differs from the image's",
    "missing_mask": "no mask supplied and segmentation is 'supplied'",
    "missing_report": "no findings and no impression text",
    "report_unparsed": "the report parser cannot read the report (empty, no sentence about any anatomy "
                       "of the grouping, a language it was not written for, or an invalid LLM reply "
                       "under ingest.llm_fallback=quarantine); detail says which",
    "too_small": "fewer slices or a smaller field of view than ingest.min_slices / ingest.min_extent_mm",
    "oblique": "voxel axes tilted from the patient axes by more than ingest.max_oblique_deg",
    "mask_labels": "the mask holds values outside the TotalSegmentator v2 'total' class map",
    "invalid_split": "the manifest row's split is not train, valid or test (set aside at load)",
    "duplicate_study_id": "the study id appears earlier in the manifest",
    "excluded": "listed in data.exclude_volumes (a known-bad input), set aside before decoding",
    "dicom_series": "the DICOM folder holds no usable CT image series (only localizers, other "
                    "modalities or single images), or several under ingest.dicom.series=only",
    "missing_slices": "a gap between DICOM slice positions larger than ingest.dicom.max_gap_factor "
                      "times the slice spacing",
    "gantry_tilt": "DICOM slices sheared by a gantry tilt and ingest.dicom.gantry_tilt=quarantine",
    "segmentation_failed": "TotalSegmentator failed on the study (ingest.segmentation=totalsegmentator; "
                           "detail gives the exception type or the limit exceeded)",
    "processing_error": "an unexpected error while processing (exception type in detail)",
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
    text = re.sub(r"s3://\S+", "<path>", text)  # any other URI or absolute path
    text = re.sub(r"(?<![\w/])/(?:[\w.-]+/)+[\w.-]*", "<path>", text)
    return text[:200]


def classify(exc: BaseException, secrets: list[str] = ()) -> tuple[str, str]:
    """Map an exception from decoding/processing to ``(reason, detail)``.

    ``QuarantineError`` carries its reason and ``ctvlp.transforms``' ``VolumeError`` its ``kind``;
    gzip/zlib/EOF errors mean a truncated stream; storage errors mean an unreadable object.
    Anything else is ``processing_error`` with the exception type, so that a new failure kind is
    visible instead of silently renamed.
    """
    detail = _scrub(str(exc), list(secrets))
    if isinstance(exc, QuarantineError):
        return exc.reason, _scrub(exc.detail, list(secrets))
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str) and kind in REASONS:
        return kind, detail.removeprefix(f"{kind}: ")
    if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error)):
        return "truncated", f"{type(exc).__name__}: {detail}"
    if isinstance(exc, (FileNotFoundError, PermissionError, OSError)):
        return "unreadable", type(exc).__name__
    return "processing_error", f"{type(exc).__name__}: {detail}"


def row(study_id: str, split: str, reason: str, detail: str = "") -> dict[str, Any]:
    if reason not in REASONS:
        raise ValueError(f"unknown quarantine reason {reason!r}")
    return {"study_id": study_id, "split": split, "reason": reason, "detail": detail}


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)

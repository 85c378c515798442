"""Why an input is refused: one reason code per bad scan, the same for ingest and the predictor.

Ingest quarantines a study with one of :data:`REASONS` (``ingest/quarantine.py`` writes the rows);
``ctvlp.predict.Predictor`` refuses a scan with the same code. :func:`classify` maps whatever a
reader, a check (:class:`~ctvlp.transforms.validate.VolumeError`, whose ``kind`` is a code) or
storage raised to ``(reason, detail)``. A detail is made of numbers and fixed words only: report
text, patient identifiers and object paths never enter it (issue 5, item 6); exception messages
are scrubbed of the study's URIs and patient id.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Sequence

# Reason code -> what it means (ingest's summary prints this table). The first eight are the
# ``kind`` codes of ``ctvlp.transforms.validate.VolumeError``, used unchanged.
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


class QuarantineError(Exception):
    """A bad input with its reason code; ingest turns it into a quarantine row, the predictor
    into a refused scan."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}; known: {sorted(REASONS)}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without the given secrets, URIs or absolute paths, at most 200 characters."""
    for s in secrets:
        if s:
            text = text.replace(s, "<redacted>")
    text = re.sub(r"s3://\S+", "<path>", text)  # any other URI or absolute path
    text = re.sub(r"(?<![\w/])/(?:[\w.-]+/)+[\w.-]*", "<path>", text)
    return text[:200]


def classify(exc: BaseException, secrets: Sequence[str] = ()) -> tuple[str, str]:
    """Map an exception from decoding/processing to ``(reason, detail)``.

    ``QuarantineError`` carries its reason and ``ctvlp.transforms``' ``VolumeError`` its ``kind``;
    gzip/zlib/EOF errors mean a truncated stream; storage errors mean an unreadable object.
    Anything else is ``processing_error`` with the exception type, so that a new failure kind is
    visible instead of silently renamed.
    """
    detail = scrub(str(exc), list(secrets))
    if isinstance(exc, QuarantineError):
        return exc.reason, scrub(exc.detail, list(secrets))
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str) and kind in REASONS:
        return kind, detail.removeprefix(f"{kind}: ")
    if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error)):
        return "truncated", f"{type(exc).__name__}: {detail}"
    if isinstance(exc, (FileNotFoundError, PermissionError, OSError)):
        return "unreadable", type(exc).__name__
    return "processing_error", f"{type(exc).__name__}: {detail}"

"""Header repair from a metadata row (CT-RATE ships NIfTI files whose headers are wrong).

CT-RATE's metadata CSVs (``train_metadata.csv``, ``validation_metadata.csv``) carry the DICOM
geometry of every volume: ``XYSpacing`` (a string such as ``"[0.75, 0.75]"``), ``ZSpacing``,
``ImageOrientationPatient`` (6 cosines), ``ImagePositionPatient`` (3 mm) and
``RescaleSlope``/``RescaleIntercept``. CT-RATE's own fix script (``download_scripts/
fix_metadata.py``, reused by fVLM's ``data/fix_data.py``) rebuilds the header from them with
SimpleITK; :func:`repair_header` does the same on a nibabel affine.

Two deliberate differences from that script, both no-ops for axis-aligned scans (almost all of
CT-RATE): the cosines become the *columns* of the direction matrix (the script hands
``row + col + normal`` to ``SetDirection``, which is row-major, i.e. the transpose), and the
result is expressed in RAS (SimpleITK works in LPS and converts when it writes NIfTI).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ctvlp.transforms.array import apply_rescale, voxel_sizes  # noqa: F401 - re-exported

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def parse_numbers(value: Any, n: int | None = None, name: str = "value") -> list[float]:
    """Parse a metadata cell into floats: ``"[0.75, 0.75]"``, ``"0.75\\0.75"``, a list or a number."""
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = ast.literal_eval(text) if text.startswith(("[", "(")) else None
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"cannot parse {name}={value!r} as numbers") from exc
        if parsed is None:  # DICOM multi-value style "a\\b\\c" or a bare number
            parsed = [p for p in text.replace("\\", " ").replace(",", " ").split() if p]
        value = parsed
    values = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=object)).tolist()]
    if n is not None and len(values) != n:
        raise ValueError(f"{name} needs {n} numbers, got {len(values)}: {value!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} has non-finite numbers: {value!r}")
    return values


def repair_header(affine: np.ndarray, shape: tuple[int, ...], meta_row: Mapping[str, Any]) -> np.ndarray:
    """Rebuild a volume's RAS affine from its metadata row.

    Args:
        affine: ``[4, 4]`` affine as read from the file (kept for any column the row lacks).
        shape: the stored ``[X, Y, Z]`` shape (checked to be 3D).
        meta_row: mapping with ``XYSpacing`` (x, y mm), ``ZSpacing`` (mm),
            ``ImageOrientationPatient`` (row then column cosine, LPS) and ``ImagePositionPatient``
            (LPS mm of voxel (0, 0, 0)). A missing or NaN column keeps the existing value.

    Returns:
        ``[4, 4]`` float64 affine: columns = (row cosine * x spacing, column cosine * y spacing,
        (row x column) * z spacing) with the origin, converted from LPS to RAS.
    """
    if len(shape) < 3:
        raise ValueError(f"repair_header expects a 3D shape, got {tuple(shape)}")
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = voxel_sizes(lps)
    directions = lps[:3, :3] / np.where(spacing > 0, spacing, 1.0)
    origin = lps[:3, 3].copy()
    if not _missing(meta_row.get("XYSpacing")):
        spacing[:2] = parse_numbers(meta_row["XYSpacing"], 2, "XYSpacing")
    if not _missing(meta_row.get("ZSpacing")):
        spacing[2] = parse_numbers(meta_row["ZSpacing"], 1, "ZSpacing")[0]
    if not _missing(meta_row.get("ImageOrientationPatient")):
        cosines = np.asarray(parse_numbers(meta_row["ImageOrientationPatient"], 6, "ImageOrientationPatient"))
        row_cos, col_cos = cosines[:3], cosines[3:]
        directions = np.stack([row_cos, col_cos, np.cross(row_cos, col_cos)], axis=1)
    if not _missing(meta_row.get("ImagePositionPatient")):
        origin = np.asarray(parse_numbers(meta_row["ImagePositionPatient"], 3, "ImagePositionPatient"))
    out = np.eye(4)
    out[:3, :3] = directions * spacing[None, :]
    out[:3, 3] = origin
    return _LPS_TO_RAS @ out


def rescale_from_meta(meta_row: Mapping[str, Any]) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)`` of a metadata row, ``(1, 0)`` where absent."""
    slope = meta_row.get("RescaleSlope")
    inter = meta_row.get("RescaleIntercept")
    slope_f = 1.0 if _missing(slope) else parse_numbers(slope, 1, "RescaleSlope")[0]
    inter_f = 0.0 if _missing(inter) else parse_numbers(inter, 1, "RescaleIntercept")[0]
    return slope_f, inter_f

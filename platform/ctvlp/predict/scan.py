"""A scan from disk to the model's grid: read (NIfTI file or DICOM series folder), the mask
(supplied, or TotalSegmentator's), then exactly ingest's checks and transforms
(:mod:`ctvlp.transforms.study`). Bad scans raise :class:`ScanRejected` with ingest's reason code.

Shapes: stored volumes ``[X, Y, Z]`` with a ``[4, 4]`` voxel -> RAS mm affine; the prepared sample
holds ``[D, H, W]`` uint8 image and grouped mask, as ``ctvlp.data.decode_sample`` gives them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ctvlp.transforms import dicom, io, study
from ctvlp.transforms.array import voxel_sizes
from ctvlp.transforms.reasons import QuarantineError, classify

Scan = str | Path | tuple  # a NIfTI path, a DICOM series folder, or (array_xyz, affine)
Mask = str | Path | np.ndarray | None  # a NIfTI path or an [X, Y, Z] array on the scan's grid
Segmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (array_xyz, affine) -> TS ids [X, Y, Z]


class ScanRejected(ValueError):
    """A scan the predictor refuses, with ingest's quarantine ``reason`` and a ``detail``."""

    def __init__(self, scan: str, reason: str, detail: str) -> None:
        super().__init__(f"{scan}: {reason} ({detail})")
        self.scan, self.reason, self.detail = scan, reason, detail


class SegmentationUnavailable(RuntimeError):
    """No mask was given and no segmenter can run here."""


def scan_name(scan: Scan) -> str:
    """A study id for ``scan``: the file name without ``.nii``/``.nii.gz``, or the folder name."""
    if isinstance(scan, tuple):
        return "array"
    name = Path(scan).name
    for suffix in (".gz", ".nii"):
        name = name.removesuffix(suffix)
    return name


def read_scan(scan: Scan, rules: dicom.DicomRules | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(array_xyz HU, affine, info)`` of a NIfTI file, a DICOM folder (every file in it, as
    ingest reads a series prefix; ``rules`` choose the series, ``ingest.dicom``) or an
    ``(array_xyz, affine)`` pair."""
    if isinstance(scan, tuple):
        array, affine = scan
        affine = np.asarray(affine, dtype=np.float64)
        return np.asarray(array), affine, {"format": "array", "raw_pixdim": voxel_sizes(affine).tolist()}
    path = Path(scan)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise QuarantineError("unreadable", "no file in the DICOM series folder")
        return dicom.read_dicom_folder([p.read_bytes() for p in files], rules or dicom.DicomRules())
    return io.read_nifti(path)


def read_mask(mask: Mask, shape, affines: list[np.ndarray]) -> np.ndarray:
    """A supplied TotalSegmentator mask ``[X, Y, Z]`` on the scan's grid (``mask_mismatch`` if not)."""
    if isinstance(mask, np.ndarray):
        if mask.shape != tuple(shape):
            raise QuarantineError("mask_mismatch", f"mask shape {mask.shape} != image shape {tuple(shape)}")
        return mask
    array, mask_affine, _ = io.read_nifti(Path(mask))
    return study.check_mask_on_grid(array, mask_affine, shape, affines)


def build_segmenter(spec: Any, device: str) -> Segmenter:
    """TotalSegmentator as ingest builds it from the spec (``ingest.totalseg``: task, roi subset,
    weights), on the predictor's device (CPU inference is slow: minutes per scan with the real
    networks). Raises SegmentationUnavailable naming what is missing and the way out (a mask)."""
    from ctvlp.segment import SegmenterSettings, TotalSegmentatorSegmenter

    try:
        return TotalSegmentatorSegmenter(SegmenterSettings.from_spec(spec, device=device))
    except (RuntimeError, ImportError) as exc:
        raise SegmentationUnavailable(
            f"no mask was given, so the scan must be segmented, and segmentation cannot run here:\n{exc}\n"
            "Pass mask=... (python -m ctvlp.predict --mask M): TotalSegmentator v2 'total' class ids on the "
            "scan's voxel grid.") from None


def prepare(scan: Scan, mask: Mask, cfg: study.StudyConfig, segment: Callable[[], Segmenter],
            study_id: str | None = None) -> dict[str, Any]:
    """One scan -> a sample like ``ctvlp.data.decode_sample``'s (``image``/``mask`` uint8
    ``[D, H, W]``, ``boxes`` ``[M, 6]``, ``voxel_counts`` ``[M]``, ``abnormal`` zeros, ``meta``).

    Args:
        segment: returns the segmenter (built on first use) when ``mask`` is None.
    Raises:
        ScanRejected (ingest's reason code), SegmentationUnavailable.
    """
    name = study_id or scan_name(scan)
    t0 = time.perf_counter()
    try:
        image, affine, info = read_scan(scan, cfg.dicom)
        image, fixed, angle = study.check_image(image, affine, info, {}, cfg)
        if mask is None:
            mask_xyz = np.asarray(segment()(image, fixed))
            segmented = True
        else:
            mask_xyz, segmented = read_mask(mask, image.shape, [fixed, affine]), False
        out = study.transform(image, fixed, mask_xyz, cfg)
    except SegmentationUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - every bad input becomes a reason code, as in ingest
        raise ScanRejected(name, *classify(exc, secrets=[str(scan) if not isinstance(scan, tuple) else ""])) from exc
    meta = {"orig_shape": list(out["orig_shape"]), "orig_spacing": [round(s, 4) for s in out["orig_spacing"]],
            "orig_axcodes": info.get("axcodes", ""), "source_format": info.get("format", ""),
            "oblique_deg": round(angle, 2), "segmented": segmented, "prepare_s": time.perf_counter() - t0}
    m = len(cfg.grouping)
    return {"study_id": name, "split": "", "image": out["image"], "mask": out["mask"], "boxes": out["boxes"],
            "voxel_counts": out["counts"], "abnormal": np.zeros(m, np.int64), "spacing": out["spacing"],
            "disease_labels": {}, "meta": meta}

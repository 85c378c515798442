"""DICOM CT as hospitals store it: a folder of files -> one volume ``[X, Y, Z]`` + RAS affine.

A study folder often holds more than the CT volume we want: several reconstructions (thin and
thick slices, lung and soft-tissue kernels), scout/localizer images, dose reports and other
objects, sometimes a missing slice, a spacing that changes along the scan, or a gantry tilt.
:func:`read_dicom_folder` handles each by rule (:class:`DicomRules`, the spec's ``ingest.dicom``)
or raises :class:`~ctvlp.transforms.validate.VolumeError` with a reason code:

=====================================  ==========================================================
what is in the folder                  what happens
=====================================  ==========================================================
files that are not DICOM, objects      skipped and counted (a corrupt slice becomes a gap)
without pixels or slice geometry
localizer / scout images               skipped: ``ImageType`` holds ``LOCALIZER``
(``ImageType`` LOCALIZER)
other modalities only                  ``not_ct``
several CT series                      ``series``: thinnest (smallest slice spacing, then most
                                       slices), most_slices, or only (-> ``dicom_series``)
no series of >= 2 parallel slices      ``dicom_series``
duplicate slice positions              ``bad_spacing``
gaps up to ``max_gap_factor`` x the    linear interpolation onto a uniform grid at the median gap
median gap (missing slices, variable)
larger gaps                            ``missing_slices``
gantry tilt (positions sheared         ``resample``: each row's profile along the stacking
against the slice normal)              direction is shifted onto an orthogonal grid (dcm2niix's
                                       correction); ``quarantine``: ``gantry_tilt``
=====================================  ==========================================================

**Tags.** Only these tags are read (:data:`TAGS_READ`): geometry (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, SliceThickness, Rows, Columns), pixel encoding
(PixelData, BitsAllocated, PixelRepresentation, RescaleSlope, RescaleIntercept, NumberOfFrames),
Modality, ImageType, and SeriesInstanceUID to group files. None of them is returned: ``info``
holds numbers and fixed words only (shape, spacing, counts of skipped files, the tilt angle), so
no tag of DICOM PS3.15's Basic Application Level Confidentiality Profile (names, ids, dates,
institutions, UIDs, descriptions) can reach shards, indexes, quarantine rows or logs from here.
SeriesInstanceUID (a profile "U" tag: replaced on de-identification) is used in memory only.
"""

from __future__ import annotations

import io as _io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ctvlp.transforms.array import apply_rescale
from ctvlp.transforms.validate import VolumeError

PathOrBytes = bytes | bytearray | memoryview | str | Path
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM world is LPS+, NIfTI's is RAS+
TILT_TOL_DEG = 0.05  # below this the stacking direction counts as the slice normal
TAGS_READ = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows",
             "Columns", "PixelData", "BitsAllocated", "PixelRepresentation", "RescaleSlope",
             "RescaleIntercept", "NumberOfFrames", "Modality", "ImageType", "SeriesInstanceUID")


@dataclass(frozen=True)
class DicomRules:
    """How a DICOM folder becomes one volume (the spec's ``ingest.dicom``; see the module doc).

    Args:
        series: ``"thinnest"``, ``"most_slices"`` or ``"only"``.
        max_gap_factor: largest slice gap, in median gaps, filled by interpolation.
        gantry_tilt: ``"resample"`` or ``"quarantine"``.
        rel_tol: gaps within this fraction of the median gap count as uniform.
    """

    series: str = "thinnest"
    max_gap_factor: float = 2.0
    gantry_tilt: str = "resample"
    rel_tol: float = 0.01

    @classmethod
    def from_spec(cls, dicom_spec: Any) -> DicomRules:
        return cls(series=dicom_spec.series, max_gap_factor=dicom_spec.max_gap_factor,
                   gantry_tilt=dicom_spec.gantry_tilt)


def _float_list(value: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray([float(v) for v in value], dtype=np.float64)
    if arr.shape != (n,):
        raise VolumeError("unreadable", f"DICOM {name} has {arr.size} values, expected {n}")
    return arr


def _parse(files: Sequence[PathOrBytes]) -> tuple[list[Any], int]:
    """Datasets of the files that pydicom reads, and how many it could not."""
    import pydicom

    out, bad = [], 0
    for f in files:
        src = str(f) if isinstance(f, (str, Path)) else _io.BytesIO(bytes(f))
        try:
            out.append(pydicom.dcmread(src))
        except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, TypeError):
            bad += 1
    return out, bad


def _is_localizer(ds: Any) -> bool:
    return any(str(v).upper() == "LOCALIZER" for v in (getattr(ds, "ImageType", None) or []))


def _is_image_slice(ds: Any) -> bool:
    return all(hasattr(ds, t) for t in ("PixelData", "ImagePositionPatient", "ImageOrientationPatient",
                                        "PixelSpacing"))


def _candidates(slices: list[Any]) -> tuple[list[list[Any]], dict[str, int]]:
    """CT image slices grouped by (series, orientation); the counts of what was dropped."""
    images = [ds for ds in slices if _is_image_slice(ds)]
    counts = {"num_not_image": len(slices) - len(images)}
    modalities = {str(getattr(ds, "Modality", "missing")) for ds in images}
    if images and "CT" not in modalities:
        raise VolumeError("not_ct", f"not CT: modality {sorted(modalities)[0]}")
    ct = [ds for ds in images if str(getattr(ds, "Modality", "")) == "CT"]
    counts["num_other_modality"] = len(images) - len(ct)
    kept = [ds for ds in ct if not _is_localizer(ds)]
    counts["num_localizers"] = len(ct) - len(kept)
    groups: dict[tuple, list[Any]] = {}
    for ds in kept:
        orient = tuple(np.round(_float_list(ds.ImageOrientationPatient, 6, "ImageOrientationPatient"), 3))
        groups.setdefault((str(getattr(ds, "SeriesInstanceUID", "")), orient), []).append(ds)
    series = [g for g in groups.values() if len(g) >= 2]
    counts["num_single_images"] = sum(len(g) for g in groups.values() if len(g) < 2)
    return series, counts


def _median_gap(series: list[Any]) -> float:
    orient = _float_list(series[0].ImageOrientationPatient, 6, "ImageOrientationPatient")
    normal = np.cross(orient[:3], orient[3:])
    pos = np.sort([_float_list(ds.ImagePositionPatient, 3, "ImagePositionPatient") @ normal for ds in series])
    return float(np.median(np.diff(pos)))


def choose_series(series: list[list[Any]], rule: str) -> list[Any]:
    """The series ``rule`` picks (see :class:`DicomRules`); VolumeError(dicom_series) when none
    qualifies or ``rule`` is ``"only"`` and there are several."""
    if not series:
        raise VolumeError("dicom_series", "no CT image series of two or more parallel slices")
    if len(series) == 1:
        return series[0]
    if rule == "only":
        raise VolumeError("dicom_series", f"{len(series)} CT image series and ingest.dicom.series=only")
    gaps = [_median_gap(s) for s in series]
    if rule == "thinnest":
        key = [(round(g, 3), -len(s)) for g, s in zip(gaps, series)]
    elif rule == "most_slices":
        key = [(-len(s), round(g, 3)) for g, s in zip(gaps, series)]
    else:
        raise ValueError(f"unknown series rule {rule!r}")
    return series[min(range(len(series)), key=key.__getitem__)]


def _stack_planes(slices: list[Any]) -> np.ndarray:
    """Rescaled pixel planes of sorted slices as one ``[slices, rows, columns]`` array."""
    planes: list[np.ndarray] = []
    for ds in slices:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise VolumeError("unreadable", "multi-frame DICOM is not supported")
        try:
            pix = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad pixel data
            raise VolumeError("unreadable", f"cannot decode DICOM pixel data ({type(exc).__name__})") from exc
        if planes and pix.shape != planes[0].shape:
            raise VolumeError("unreadable", "slices of the series differ in Rows/Columns")
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        inter = float(getattr(ds, "RescaleIntercept", 0.0))
        planes.append(apply_rescale(pix, slope, inter))
    dtype = np.result_type(*[p.dtype for p in planes])
    return np.stack([p.astype(dtype, copy=False) for p in planes])


def _stacking(positions: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit stacking direction ``e`` (first -> last slice, sorted along the normal) and each
    slice's offset along it ``s`` (mm, from the first); slices must lie on one line."""
    span = positions[-1] - positions[0]
    e = span / np.linalg.norm(span) if np.linalg.norm(span) > 0 else normal
    rel = positions - positions[0]
    s = rel @ e
    off_line = np.linalg.norm(rel - np.outer(s, e), axis=1).max()
    if off_line > 0.05 * max(float(np.median(np.diff(s))), 1e-3) + 1e-3:
        raise VolumeError("unreadable", f"slice positions do not lie on a line ({off_line:.2f} mm off)")
    return e, s


def _check_gaps(s: np.ndarray, rules: DicomRules) -> tuple[float, bool, float]:
    """(uniform spacing, whether to interpolate, largest gap in spacings)."""
    gaps = np.diff(s)
    gap = float(np.median(gaps))
    if gap <= 1e-6 or gaps.min() <= 1e-6:
        raise VolumeError("bad_spacing", f"duplicate slice positions: gaps {np.round(gaps.min(), 3)}.."
                                         f"{np.round(gaps.max(), 3)} mm")
    ratio = float(gaps.max() / gap)
    if ratio > rules.max_gap_factor * (1 + rules.rel_tol):
        raise VolumeError("missing_slices", f"a slice gap of {gaps.max():.2f} mm is {ratio:.1f} x the "
                                            f"{gap:.2f} mm spacing (max {rules.max_gap_factor})")
    return gap, bool(np.abs(gaps - gap).max() > rules.rel_tol * gap), ratio


def resample_stack(volume: np.ndarray, s: np.ndarray, shift_ji: np.ndarray, gap: float) -> np.ndarray:
    """Sample ``volume [K, rows, cols]`` (slice k at offset ``s[k]`` mm along the stacking
    direction, voxel (j, i) of every slice displaced by ``shift_ji[j, i]`` mm along it) at offsets
    ``0, gap, 2 gap, ...`` up to ``s[-1]``, linearly; outside the acquired range: the minimum
    (air). Returns float32 ``[T, rows, cols]``."""
    num = int(round(s[-1] / gap)) + 1
    t = np.arange(num) * gap
    out = np.empty((num, *volume.shape[1:]), dtype=np.float32)
    fill = float(volume.min())
    cols = np.arange(volume.shape[2])
    for j in range(volume.shape[1]):  # one row at a time: [T, cols] index arrays stay small
        q = t[:, None] - shift_ji[j][None, :]
        k0 = np.clip(np.searchsorted(s, q, side="right") - 1, 0, len(s) - 2)
        w = (q - s[k0]) / (s[k0 + 1] - s[k0])
        row = volume[:, j, :]
        val = row[k0, cols] * (1 - w) + row[k0 + 1, cols] * w
        out[:, j, :] = np.where((q < -1e-6) | (q > s[-1] + 1e-6), fill, val)
    return out


def read_dicom_folder(files: Sequence[PathOrBytes], rules: DicomRules = DicomRules()
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One CT volume from a folder's files (bytes or paths, any order); see the module doc.

    Returns:
        ``(array_xyz, affine, info)``: ``[columns, rows, slices]`` HU voxels (the stored integer
        type when no interpolation was needed, else float32), ``[4, 4]`` RAS affine, ``info``
        with ``format="dicom"``, ``zooms``, ``axcodes``, ``num_slices`` and ``dicom`` (counts of
        skipped objects, number of candidate series, ``max_gap_ratio``, ``interpolated``,
        ``gantry_tilt_deg``).

    Raises:
        VolumeError: ``unreadable``, ``not_ct``, ``dicom_series``, ``bad_spacing``,
        ``missing_slices``, ``gantry_tilt``.
    """
    parsed, num_unparsed = _parse(files)
    if not parsed:
        raise VolumeError("unreadable", f"no readable DICOM file among {len(files)}")
    series, counts = _candidates(parsed)
    chosen = choose_series(series, rules.series)
    orient = _float_list(chosen[0].ImageOrientationPatient, 6, "ImageOrientationPatient")
    row_cos, col_cos = orient[:3], orient[3:]
    normal = np.cross(row_cos, col_cos)
    positions = np.stack([_float_list(ds.ImagePositionPatient, 3, "ImagePositionPatient") for ds in chosen])
    order = np.argsort(positions @ normal, kind="stable")
    chosen, positions = [chosen[i] for i in order], positions[order]
    e, s = _stacking(positions, normal)
    gap, uneven, ratio = _check_gaps(s, rules)
    row_spacing, col_spacing = _float_list(chosen[0].PixelSpacing, 2, "PixelSpacing")
    if not (row_spacing > 0 and col_spacing > 0):  # also NaN: the affine would be singular
        raise VolumeError("bad_spacing", f"PixelSpacing {[float(row_spacing), float(col_spacing)]} mm: "
                                         "zero or negative")
    tilt = float(np.degrees(np.arccos(np.clip(abs(e @ normal), 0.0, 1.0))))
    if tilt > TILT_TOL_DEG and rules.gantry_tilt == "quarantine":
        raise VolumeError("gantry_tilt", f"slices sheared by a {tilt:.1f} deg gantry tilt "
                                         "(ingest.dicom.gantry_tilt=quarantine)")
    volume = _stack_planes(chosen)  # [slices, rows, columns]
    axes = np.stack([row_cos * col_spacing, col_cos * row_spacing])  # mm per column / row step (LPS)
    if tilt > TILT_TOL_DEG:
        # voxel (j, i) of slice k lies s_k + j*(col step . e) + i*(row step . e) along e: remove
        # that shear, keeping each in-plane axis' component perpendicular to e.
        along = axes @ e  # [2]: mm along e per column step, per row step
        shift = np.arange(volume.shape[1])[:, None] * along[1] + np.arange(volume.shape[2])[None, :] * along[0]
        volume = resample_stack(volume, s, shift, gap)
        axes = axes - np.outer(along, e)
    elif uneven:
        volume = resample_stack(volume, s, np.zeros(volume.shape[1:]), gap)
    affine_lps = np.eye(4)
    affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 2] = axes[0], axes[1], e * gap
    affine_lps[:3, 3] = positions[0]
    affine = _LPS_TO_RAS @ affine_lps
    info = {
        "format": "dicom", "zooms": [float(np.linalg.norm(a)) for a in axes] + [gap],
        "axcodes": "".join(nib.aff2axcodes(affine)), "num_slices": int(volume.shape[0]),
        "dicom": {"num_files": len(files), "num_unparsed": num_unparsed, **counts,
                  "num_series": len(series), "num_acquired_slices": len(chosen),
                  "max_gap_ratio": round(ratio, 3), "interpolated": bool(uneven or tilt > TILT_TOL_DEG),
                  "gantry_tilt_deg": round(tilt, 2)},
    }
    return volume.transpose(2, 1, 0), affine, info


def read_dicom_series(files: Sequence[PathOrBytes], rel_tol: float = 0.01
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Exactly one CT series, evenly spaced: :func:`read_dicom_folder` with ``series="only"`` and
    no interpolation (a gap beyond ``rel_tol`` raises ``missing_slices``)."""
    return read_dicom_folder(files, DicomRules(series="only", max_gap_factor=1.0, rel_tol=rel_tol))

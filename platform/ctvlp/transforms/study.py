"""One study's volume from its decoded voxels to the model's grid: the checks and transforms that
ingest (``ingest/process.py``) and the predictor (``ctvlp.predict``) both run, in one place.

Steps: header repair from a metadata row (CT-RATE) -> checks (finite, pixdim, spacing, obliquity,
size, CT range: :func:`check_image`) -> the supplied or segmented mask on the image grid
(:func:`check_mask_on_grid`) -> :func:`transform`: crop to the anatomies at native resolution
(with room for margin and min size) -> canonical RAS (D, H, W) views -> resample (nearest raw
ids, then grouped; trilinear image with the HU window to uint8 folded in) -> boxes / voxel
counts -> final crop + margin -> pad to min size. Every failure raises with a reason code of
:mod:`ctvlp.transforms.reasons` (a :class:`~ctvlp.transforms.validate.VolumeError` ``kind``).

Shapes: stored volumes ``[X, Y, Z]`` with a ``[4, 4]`` voxel -> RAS mm affine; outputs ``[D, H, W]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

import nibabel as nib
import numpy as np

from ctvlp import anatomy
from ctvlp.transforms import array as T
from ctvlp.transforms import header, validate
from ctvlp.transforms.dicom import DicomRules


@dataclass(frozen=True)
class StudyConfig:
    """The spec's grid and input checks as plain values (picklable into Ray tasks).

    Args:
        grouping: ordered ``{anatomy: [TS class names]}`` (anatomy j -> grouped mask value j + 1).
        spacing: target (D, H, W) mm; hu_window: (lo, hi) HU -> 0..255.
        crop_margin / min_size: (D, H, W) voxels of the output grid.
        repair_headers: rebuild geometry from the metadata row when it has one.
        min_slices / min_extent_mm: smaller inputs are refused as ``too_small``.
        max_oblique_deg: more oblique inputs are refused as ``oblique``.
        dicom: series choice, slice-gap and gantry-tilt rules of DICOM inputs (``ingest.dicom``).
    """

    grouping: dict[str, list[str]]
    spacing: tuple[float, float, float]
    hu_window: tuple[float, float]
    crop_margin: tuple[int, int, int]
    min_size: tuple[int, int, int]
    repair_headers: bool = True
    min_slices: int = 16
    min_extent_mm: tuple[float, float, float] = (100.0, 150.0, 150.0)
    max_oblique_deg: float = 5.0
    dicom: DicomRules = field(default_factory=DicomRules)

    @classmethod
    def from_spec(cls, spec: Any) -> StudyConfig:
        """From a ``ctvlp.config.JobSpec`` (``data`` grid, ``ingest`` checks)."""
        d, ing = spec.data, spec.ingest
        return cls(grouping=d.grouping_table, spacing=tuple(d.spacing), hu_window=tuple(d.hu_window),
                   crop_margin=tuple(d.crop_margin), min_size=tuple(d.min_size), repair_headers=ing.repair_headers,
                   min_slices=ing.min_slices, min_extent_mm=tuple(ing.min_extent_mm),
                   max_oblique_deg=ing.max_oblique_deg, dicom=DicomRules.from_spec(ing.dicom))

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as keywords (to build a subclass such as ingest's ``StageConfig``)."""
        return {f.name: getattr(self, f.name) for f in fields(StudyConfig)}

    @property
    def anatomies(self) -> list[str]:
        return list(self.grouping)


@lru_cache(maxsize=4)
def _lut(grouping_json: str) -> np.ndarray:
    return anatomy.group_lut(json.loads(grouping_json))


def repair(array: np.ndarray, affine: np.ndarray, info: dict, meta: dict, cfg: StudyConfig):
    """CT-RATE header repair: geometry and, when the file itself has no scaling, HU rescale.
    Returns ``(array, affine)``, unchanged without a metadata row or with repair off."""
    if not (cfg.repair_headers and meta):
        return array, affine
    try:
        fixed = header.repair_header(affine, array.shape, meta)
        slope, inter = header.rescale_from_meta(meta)
    except ValueError as exc:
        raise validate.VolumeError("bad_spacing", f"metadata geometry unusable: {type(exc).__name__}") from exc
    # Apply the metadata rescale only to unscaled files: a header that already carries
    # scl_slope/scl_inter has been rescaled by read_nifti, and doing it twice corrupts HU.
    if info.get("slope", 1.0) == 1.0 and info.get("inter", 0.0) == 0.0:
        array = T.apply_rescale(array, slope, inter)
    return array, fixed


def check_geometry(shape_xyz, affine: np.ndarray, cfg: StudyConfig) -> float:
    """Spacing (``bad_spacing``: zero, negative, huge), obliquity (``oblique``) and size
    (``too_small``) of the volume to be used; returns its obliquity in degrees."""
    angle = validate.check_oblique(affine, cfg.max_oblique_deg)  # zero axes raise bad_spacing first
    zooms = T.voxel_sizes(affine)
    validate.check_spacing(zooms)
    dhw = 2 - nib.orientations.io_orientation(affine)[:, 0].astype(int)  # stored axis -> (D, H, W) index
    shape_dhw, spacing_dhw = np.empty(3, int), np.empty(3)
    shape_dhw[dhw], spacing_dhw[dhw] = shape_xyz, zooms
    validate.check_size(shape_dhw.tolist(), spacing_dhw.tolist(), cfg.min_slices, cfg.min_extent_mm)
    return angle


def check_image(image: np.ndarray, affine: np.ndarray, info: dict, meta: dict,
                cfg: StudyConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """Every check of a decoded image, in ingest's order; returns ``(image, affine to use,
    obliquity in degrees)`` (header repaired from ``meta`` when there is one).

    Args:
        image: ``[X, Y, Z]`` HU; affine: ``[4, 4]`` as stored; info: the reader's info dict
            (``raw_pixdim``, ``slope``, ``inter``); meta: the manifest's metadata row ({} if none).
    """
    validate.check_finite(image)
    image, fixed = repair(image, affine, info, meta, cfg)
    raw_pixdim = info.get("raw_pixdim", [1.0, 1.0, 1.0])
    if not (cfg.repair_headers and meta) and not all(math.isfinite(z) and z > 0 for z in raw_pixdim):
        raise validate.VolumeError("bad_spacing", f"header pixdim {[round(z, 4) for z in raw_pixdim]} mm: "
                                                  "zero or negative")
    angle = check_geometry(image.shape, fixed, cfg)
    validate.check_ct_range(image)
    return image, fixed, angle


def check_mask_on_grid(mask: np.ndarray, mask_affine: np.ndarray, shape, affines: list[np.ndarray]) -> np.ndarray:
    """``mask`` if it lies on the image grid of any of ``affines`` (the stored and the repaired
    one: masks made before or after repairing a CT-RATE header both fit); else ``mask_mismatch``."""
    errors = []
    for aff in affines:
        try:
            validate.check_mask_matches(mask.shape, mask_affine, shape, aff)
            return mask
        except validate.VolumeError as exc:
            errors.append(exc)
    raise errors[-1]


def _native_window(mask_xyz: np.ndarray, affine: np.ndarray, lut: np.ndarray,
                   cfg: StudyConfig) -> tuple[slice, ...]:
    """Window of the *stored* grid that surely holds the final crop (box + margin, min size).

    The union box of the grouping's classes in the raw TotalSegmentator mask (one table lookup
    marks their voxels, three ``any`` projections bound them) is grown by the margin and to the
    min size (converted to stored voxels). Cropping here, before reorientation, grouping and
    resampling, means the flips/copies of ``to_canonical``, the LUT and the trilinear pass touch
    only the window; the final crop is still taken on the output grid, so the result is the same.
    """
    relevant = T.lookup((lut > 0).astype(np.uint8), mask_xyz.astype(np.uint8, copy=False)).view(bool)
    # the memory order of nibabel's Fortran-ordered arrays is the transposed view: reduce in it
    flip = relevant.flags.f_contiguous and not relevant.flags.c_contiguous
    mem = relevant.T if flip else relevant
    outer = mem.any(axis=2)  # [axis 0, axis 1] of the memory order
    spans = [np.flatnonzero(p) for p in (outer.any(axis=1), outer.any(axis=0), mem.any(axis=(0, 1)))]
    if not len(spans[0]):
        raise validate.VolumeError("empty_mask", "no voxel of any anatomy of the grouping")
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in spans]
    if flip:
        bounds = bounds[::-1]  # back to (x, y, z)
    ornt = nib.orientations.io_orientation(affine)
    zooms = T.voxel_sizes(affine)
    out = []
    for ax in range(3):
        lo, hi = bounds[ax]
        dhw = 2 - int(ornt[ax, 0])  # stored axis -> RAS axis (x, y, z) -> (D, H, W) index
        scale = cfg.spacing[dhw] / zooms[ax]  # stored voxels per output voxel
        need = max(hi - lo + 2 * cfg.crop_margin[dhw] * scale, cfg.min_size[dhw] * scale)
        extra = int(math.ceil((need - (hi - lo)) / 2 + 2 * scale + 2))
        out.append(slice(max(0, lo - extra), min(mask_xyz.shape[ax], hi + extra)))
    return tuple(out)


def _integer_mask(mask: np.ndarray) -> np.ndarray:
    if np.issubdtype(mask.dtype, np.integer):
        return mask
    if not np.array_equal(mask, np.round(mask)) or mask.min() < 0 or mask.max() > 255:
        raise validate.VolumeError("mask_labels", f"mask values are not TotalSegmentator ids ({mask.dtype})")
    return mask.astype(np.uint8)


def transform(image_xyz, affine, mask_xyz, cfg: StudyConfig) -> dict[str, Any]:
    """Arrays -> cropped uint8 image/mask ``[D, H, W]`` on the target grid + boxes and counts.

    The output grid is the resampled native window (:func:`_native_window`); within it, only
    what the final crop keeps is windowed, and the mask is resampled before it is grouped:
    nearest resampling of the raw ids (views of the stored window: flips and transposes cost no
    copy) -> TotalSegmentator ids grouped on the output grid only -> boxes and counts -> the
    crop (box + margin, min size) -> image: the window trilinearly resampled with the HU window
    folded in (:func:`~ctvlp.transforms.array.resample_hu_to_uint8`: separable passes from the
    stored int16, no float32 copy of the window) -> the crop -> padding.
    """
    validate.check_spacing(T.voxel_sizes(affine))
    lut = _lut(json.dumps(cfg.grouping))
    mask_xyz = _integer_mask(mask_xyz)
    validate.check_mask_labels(mask_xyz, max(anatomy.ts_total_classes()))
    window = _native_window(mask_xyz, affine, lut, cfg)
    shift = np.eye(4)
    shift[:3, 3] = [w.start for w in window]
    crop_affine = affine @ shift  # voxel (0,0,0) of the window
    ids, spacing = T.canonical_view(mask_xyz[window], crop_affine)
    ids, out_spacing = T.resample(ids, spacing, cfg.spacing, mode="nearest")
    mask = T.group_mask(ids, lut)  # the LUT on the output grid: grouping commutes with nearest
    boxes, counts = T.anatomy_boxes(mask, len(cfg.grouping))
    crop, pads, offset = T.crop_window(T.union_box(boxes), mask.shape, cfg.crop_margin, cfg.min_size)
    image, _ = T.resample_hu_to_uint8(T.canonical_view(image_xyz[window], crop_affine)[0], spacing, cfg.spacing,
                                      *cfg.hu_window)
    image = image[crop]
    mask = mask[crop]
    if any(p != (0, 0) for p in pads):  # 0 = air after windowing, background in the mask
        image, mask = np.pad(image, pads), np.pad(mask, pads)
    present = boxes[:, 0] >= 0
    boxes[present] -= np.repeat(np.asarray(offset, dtype=boxes.dtype), 2)  # into crop coordinates
    return {"image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask), "spacing": out_spacing,
            "boxes": boxes, "counts": counts, "orig_spacing": T.voxel_sizes(affine).tolist(),
            "orig_shape": tuple(int(s) for s in image_xyz.shape)}

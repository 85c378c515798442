"""The CPU stage for one study: bytes in storage -> one shard row (or a quarantine reason).

Steps (each a pure function of ``ctvlp.transforms`` / ``ctvlp.reports`` / ``ctvlp.models.text``):
per-anatomy report texts and labels first (``ingest.reports``: a missing or unreadable report
costs no decode) -> read bytes -> decode NIfTI (magic-byte gzip detection) or a DICOM series ->
repair the header from the metadata row (CT-RATE) -> checks (3D, finite, geometry: spacing,
obliquity, size; CT range) -> mask: read, check it is on the image grid and holds only class-map
ids -> crop to the anatomies at native resolution (with room for margin and min size) ->
canonical RAS (D, H, W) views -> resample (nearest raw ids, then grouped; trilinear image) ->
boxes / voxel counts -> final crop + margin -> HU window to uint8 -> pad to min size -> token
ids -> compress. (:func:`transform` says which copies this order saves.)

No Ray here: :mod:`ingest.pipeline` calls :func:`process_batch` from ``map_batches``; tests and
``bench/ingest.py`` call it directly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import nibabel as nib
import numpy as np

from ctvlp import anatomy
from ctvlp.data.codec import encode_volume
from ctvlp.transforms import array as T
from ctvlp.transforms import header, io, validate
from ingest.quarantine import QuarantineError, classify
from ingest.reports import ReportConfig, report_labels
from ingest.storage import Storage


@dataclass(frozen=True)
class StageConfig:
    """Everything the CPU stage needs, as plain values (picklable into Ray tasks).

    Args:
        anatomies / grouping: ordered anatomy names and ``{anatomy: [TS class names]}``.
        spacing: target (D, H, W) mm; hu_window: (lo, hi) HU -> 0..255.
        crop_margin / min_size: (D, H, W) voxels of the output grid.
        codec / codec_level: volume compression in shards.
        repair_headers: rebuild geometry from the metadata row when it has one.
        text_name_or_path / max_length: the spec's tokenizer.
        reports: the report parser and its policies (``ingest.report_*``, ``ingest.llm_*``).
        min_slices / min_extent_mm: smaller inputs are quarantined as ``too_small``.
        max_oblique_deg: more oblique inputs are quarantined as ``oblique``; the angle of every
            written study is in its ``meta`` and in the index.
    """

    grouping: dict[str, list[str]]
    spacing: tuple[float, float, float]
    hu_window: tuple[float, float]
    crop_margin: tuple[int, int, int]
    min_size: tuple[int, int, int]
    codec: str = "zstd"
    codec_level: int = 3
    repair_headers: bool = True
    text_name_or_path: str = "tiny"
    max_length: int = 384
    storage: Storage = field(default_factory=Storage)
    reports: ReportConfig = field(default_factory=ReportConfig)
    min_slices: int = 16
    min_extent_mm: tuple[float, float, float] = (100.0, 150.0, 150.0)
    max_oblique_deg: float = 5.0

    @property
    def anatomies(self) -> list[str]:
        return list(self.grouping)


@lru_cache(maxsize=4)
def _lut(grouping_json: str) -> np.ndarray:
    return anatomy.group_lut(json.loads(grouping_json))


@lru_cache(maxsize=2)
def _tokenizer(name_or_path: str):
    from ctvlp.models import text  # transformers import: once per worker process

    return text.build_tokenizer(name_or_path)


def tokenize(texts: list[str], cfg: StageConfig) -> list[list[int]]:
    """Per-anatomy token ids (no padding; the collate pads per batch)."""
    from ctvlp.models import text

    return text.tokenize_texts(_tokenizer(cfg.text_name_or_path), texts, cfg.max_length)


def read_image(rec: dict[str, Any], storage: Storage) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode the study's image: ``(array_xyz, affine, info)`` (HU after any stored rescale)."""
    try:
        if rec["image_format"] == "dicom":
            files = storage.list_files(rec["image_uri"])
            if not files:
                raise QuarantineError("unreadable", "no object under the DICOM series prefix")
            return io.read_dicom_series([storage.read_bytes(f) for f in files])
        return io.read_nifti(storage.read_bytes(rec["image_uri"]))
    except (FileNotFoundError, PermissionError) as exc:
        raise QuarantineError("unreadable", f"image object: {type(exc).__name__}") from exc


def repair(array: np.ndarray, affine: np.ndarray, info: dict, meta: dict, cfg: StageConfig):
    """CT-RATE header repair: geometry and, when the file itself has no scaling, HU rescale."""
    if not (cfg.repair_headers and meta):
        return array, affine
    try:
        fixed = header.repair_header(affine, array.shape, meta)
        slope, inter = header.rescale_from_meta(meta)
    except ValueError as exc:
        raise QuarantineError("bad_spacing", f"metadata geometry unusable: {type(exc).__name__}")
    # Apply the metadata rescale only to unscaled files: a header that already carries
    # scl_slope/scl_inter has been rescaled by read_nifti, and doing it twice corrupts HU.
    if info.get("slope", 1.0) == 1.0 and info.get("inter", 0.0) == 0.0:
        array = T.apply_rescale(array, slope, inter)
    return array, fixed


def read_mask(rec: dict[str, Any], shape, affines: list[np.ndarray], storage: Storage) -> np.ndarray:
    """The supplied TotalSegmentator mask ``[X, Y, Z]``, checked to lie on the image grid.

    ``affines`` are the acceptable image affines (as stored, and after header repair): masks made
    before or after repairing a CT-RATE header are both on the image grid.
    """
    segmented = rec.get("_mask_nifti")  # from the TotalSegmentator stage, when it ran
    if not rec.get("mask_uri") and segmented is None:
        raise QuarantineError("missing_mask", "no mask_uri and segmentation is 'supplied'")
    try:
        raw = segmented if segmented is not None else storage.read_bytes(rec["mask_uri"])
        mask, mask_affine, _ = io.read_nifti(raw)
    except (FileNotFoundError, PermissionError) as exc:
        raise QuarantineError("unreadable", f"mask object: {type(exc).__name__}") from exc
    errors = []
    for aff in affines:
        try:
            validate.check_mask_matches(mask.shape, mask_affine, shape, aff)
            return mask
        except validate.VolumeError as exc:
            errors.append(exc)
    raise errors[-1]


def _native_window(mask_xyz: np.ndarray, affine: np.ndarray, lut: np.ndarray,
                   cfg: StageConfig) -> tuple[slice, ...]:
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


def transform(image_xyz, affine, mask_xyz, cfg: StageConfig) -> dict[str, Any]:
    """Arrays -> cropped uint8 image/mask ``[D, H, W]`` on the target grid + boxes and counts.

    The output grid is the resampled native window (:func:`_native_window`); within it, only
    what the final crop keeps is windowed, and the mask is resampled before it is grouped:
    nearest resampling of the raw ids (views of the stored window: flips and transposes cost no
    copy) -> TotalSegmentator ids grouped on the output grid only -> boxes and counts -> the
    crop (box + margin, min size) -> image: the window trilinearly resampled (the window's
    canonical view converted to float32 in one pass) -> the crop -> HU window -> padding.
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
    image, _ = T.resample(T.canonical_view(image_xyz[window], crop_affine)[0], spacing, cfg.spacing)
    image = T.hu_to_uint8(image[crop], *cfg.hu_window)
    mask = mask[crop]
    if any(p != (0, 0) for p in pads):  # 0 = air after windowing, background in the mask
        image, mask = np.pad(image, pads), np.pad(mask, pads)
    present = boxes[:, 0] >= 0
    boxes[present] -= np.repeat(np.asarray(offset, dtype=boxes.dtype), 2)  # into crop coordinates
    return {"image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask), "spacing": out_spacing,
            "boxes": boxes, "counts": counts, "orig_spacing": T.voxel_sizes(affine).tolist(),
            "orig_shape": tuple(int(s) for s in image_xyz.shape)}


def report_texts(rec: dict[str, Any], cfg: StageConfig) -> tuple[list[str], list[int]]:
    """Per-anatomy (text, label 1 / 0 / -1) in the grouping's order (:func:`ingest.reports.report_labels`)."""
    return report_labels(rec, cfg.anatomies, cfg.reports)


def check_geometry(shape_xyz, affine: np.ndarray, cfg: StageConfig) -> float:
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


def process_study(rec: dict[str, Any], cfg: StageConfig, timings: dict[str, float]) -> dict[str, Any]:
    """One manifest record -> one shard row (docs/DESIGN.md). Raises on bad input.

    ``timings`` accumulates seconds per sub-stage (read, transform, text, encode).
    """
    t0 = time.perf_counter()
    texts, labels = report_texts(rec, cfg)  # first: a missing report costs no decode
    image, affine, info = read_image(rec, cfg.storage)
    validate.check_finite(image)
    meta = json.loads(rec.get("meta") or "{}")
    image, fixed_affine = repair(image, affine, info, meta, cfg)
    raw_pixdim = info.get("raw_pixdim", [1.0, 1.0, 1.0])
    if not (cfg.repair_headers and meta) and not all(math.isfinite(z) and z > 0 for z in raw_pixdim):
        raise QuarantineError("bad_spacing", f"header pixdim {[round(z, 4) for z in raw_pixdim]} mm: zero or negative")
    oblique_deg = check_geometry(image.shape, fixed_affine, cfg)
    validate.check_ct_range(image)
    mask = read_mask(rec, image.shape, [fixed_affine, affine], cfg.storage)
    t1 = time.perf_counter()
    out = transform(image, fixed_affine, mask, cfg)
    t2 = time.perf_counter()
    ids = tokenize(texts, cfg)
    t3 = time.perf_counter()
    row = {
        "study_id": rec["study_id"], "split": rec["split"],
        "shape": list(out["image"].shape), "spacing": [float(s) for s in out["spacing"]],
        "image": encode_volume(out["image"], cfg.codec, cfg.codec_level),
        "mask": encode_volume(out["mask"], cfg.codec, cfg.codec_level),
        "codec": cfg.codec, "boxes": out["boxes"].tolist(), "voxel_counts": out["counts"].tolist(),
        "texts": texts, "abnormal": labels, "input_ids": ids,
        "disease_labels": rec.get("disease_labels") or "{}",
        "meta": json.dumps({  # non-identifying only: geometry and source format
            "orig_shape": out["orig_shape"], "orig_spacing": [round(s, 4) for s in out["orig_spacing"]],
            "orig_axcodes": info.get("axcodes", ""), "source_format": info.get("format", ""),
            "header_repaired": bool(cfg.repair_headers and meta), "oblique_deg": round(oblique_deg, 2),
        }),
    }
    t4 = time.perf_counter()
    for k, v in (("read", t1 - t0), ("transform", t2 - t1), ("text", t3 - t2), ("encode", t4 - t3)):
        timings[k] = timings.get(k, 0.0) + v
    return row


def process_records(records: list[dict[str, Any]], cfg: StageConfig) -> list[dict[str, Any]]:
    """Process studies; every record yields exactly one output: a shard row or a quarantine row.

    Output dicts carry ``status`` ("ok" / "quarantined"), ``reason``/``detail`` (quarantined) and
    ``seconds`` (this study's processing time) besides the shard columns.
    """
    if records:
        _tokenizer(cfg.text_name_or_path)  # once per worker, kept out of the per-study timings
    out = []
    for rec in records:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            row = process_study(rec, cfg, timings)
            row.update(status="ok", reason="", detail="")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a quarantine row
            reason, detail = classify(exc, secrets=[rec.get("image_uri", ""), rec.get("mask_uri", ""),
                                                    rec.get("patient_id", "")])
            row = {"study_id": rec["study_id"], "split": rec["split"], "status": "quarantined",
                   "reason": reason, "detail": detail}
        row["seconds"] = time.perf_counter() - t0
        row["timings"] = json.dumps(timings)
        row["shard"] = rec.get("shard", "")
        out.append(row)
    return out

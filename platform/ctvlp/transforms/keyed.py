"""Keyed (dict) wrappers over the pure transforms: what ingest's Ray Data ``map_batches`` calls.

A study travels as a row dict. Two row functions split the CPU work around the optional GPU
segmentation stage (``ctvlp.segment``), and :func:`map_rows` turns either into a batch function:

``decode_row(row, prep)``  reads ``row["image"]`` (NIfTI bytes/path, or a list of DICOM files) and
    optional ``row["mask"]`` (NIfTI bytes/path of raw TotalSegmentator ids), repairs the header from
    ``row["meta"]`` when ``prep.repair_headers``, validates, and adds ``image_xyz``, ``affine``,
    ``mask_xyz`` (or None), ``source`` (non-identifying decode info, a dict).
``prepare_row(row, prep)`` takes a decoded row with ``mask_xyz`` set and adds the shard fields
    (docs/DESIGN.md): ``image`` uint8 [D,H,W], ``mask`` uint8 [D,H,W] grouped, ``boxes`` int32
    [M,6], ``voxel_counts`` int64 [M], ``shape`` int32 [3], ``spacing`` float32 [3], ``meta`` dict;
    the full-resolution ``image_xyz``/``mask_xyz``/``affine`` are dropped.

Bad studies raise :class:`~ctvlp.transforms.validate.VolumeError`; :func:`map_rows` catches it and
fills ``error_kind``/``error`` instead, so a batch never fails for one bad study.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ctvlp.anatomy import GROUPING_PRESETS, group_lut
from ctvlp.transforms import array as A
from ctvlp.transforms import validate as V
from ctvlp.transforms.header import repair_header, rescale_from_meta
from ctvlp.transforms.io import read_dicom_series, read_nifti

Row = dict[str, Any]


@dataclass(frozen=True)
class VolumePrep:
    """Per-volume preprocessing parameters (all 3-tuples in (D, H, W) order).

    Args:
        spacing: target voxel size in mm.
        hu_window: HU (lo, hi) mapped to [0, 1], stored as uint8 0..255.
        crop_margin: voxels kept around the union of anatomy boxes.
        min_size: stored crops are padded (or grown into the volume) to at least this size.
        grouping: ``{anatomy: [TotalSegmentator class names]}``; anatomy j -> mask value j + 1.
        repair_headers: rebuild geometry and rescale from ``row["meta"]`` (CT-RATE).
    """

    spacing: tuple[float, float, float]
    hu_window: tuple[float, float]
    crop_margin: tuple[int, int, int]
    min_size: tuple[int, int, int]
    grouping: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(GROUPING_PRESETS["chest"]))
    repair_headers: bool = False

    @classmethod
    def from_spec(cls, spec: Any) -> VolumePrep:
        """Build from a ``ctvlp.config.JobSpec`` (reads ``spec.data`` and ``spec.ingest``)."""
        data = spec.data
        return cls(
            spacing=tuple(float(v) for v in data.spacing),
            hu_window=tuple(float(v) for v in data.hu_window),
            crop_margin=tuple(int(v) for v in data.crop_margin),
            min_size=tuple(int(v) for v in data.min_size),
            grouping=dict(data.grouping_table),
            repair_headers=bool(spec.ingest.repair_headers),
        )

    @property
    def num_anatomies(self) -> int:
        return len(self.grouping)

    @cached_property
    def lut(self) -> np.ndarray:
        """``lut[ts_id] -> grouped id`` (validated once per instance, then reused per row)."""
        return group_lut({k: list(v) for k, v in self.grouping.items()})


def _meta_dict(meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if isinstance(meta, (str, bytes)):
        return json.loads(meta)
    return dict(meta)


def load_image(image: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a NIfTI (bytes or path) or a DICOM series (a list/array of bytes or paths)."""
    if isinstance(image, (list, tuple)) or (isinstance(image, np.ndarray) and image.dtype == object):
        return read_dicom_series(list(image))
    if image is None:
        raise V.VolumeError("unreadable", "no image object")
    return read_nifti(image)


def decode_row(row: Row, prep: VolumePrep) -> Row:
    """Decode, repair and validate a study's image (and supplied mask). See the module doc."""
    image_xyz, file_affine, info = load_image(row.get("image"))
    affine = file_affine
    if prep.repair_headers:
        meta = _meta_dict(row.get("meta"))
        affine = repair_header(file_affine, image_xyz.shape, meta)
        image_xyz = A.apply_rescale(image_xyz, *rescale_from_meta(meta))
        info["header_repaired"] = True
    V.check_finite(image_xyz)
    V.check_spacing(A.voxel_sizes(affine))
    info["hu_range"] = list(V.check_ct_range(image_xyz))
    mask_xyz = None
    if row.get("mask") is not None:
        mask_xyz, mask_affine, _ = read_nifti(row["mask"])
        # A supplied mask may carry the same broken header as its image: accept either affine.
        try:
            V.check_mask_matches(mask_xyz.shape, mask_affine, image_xyz.shape, affine)
        except V.VolumeError:
            V.check_mask_matches(mask_xyz.shape, mask_affine, image_xyz.shape, file_affine)
    out = dict(row)
    out.update(image_xyz=image_xyz, affine=affine, mask_xyz=mask_xyz, source=info)
    return out


def prepare_row(row: Row, prep: VolumePrep) -> Row:
    """Canonicalise, resample, window, group, crop and box a decoded row (see the module doc)."""
    if row.get("mask_xyz") is None:
        raise V.VolumeError("empty_mask", "no mask: supply one or run the segmentation stage")
    grouped_xyz = A.group_mask(row["mask_xyz"], prep.lut)
    V.check_mask_nonempty(grouped_xyz)
    image, spacing = A.to_canonical(row["image_xyz"], row["affine"])
    mask, _ = A.to_canonical(grouped_xyz, row["affine"])
    image, new_spacing = A.resample(image, spacing, prep.spacing, mode="trilinear")
    mask, _ = A.resample(mask, spacing, prep.spacing, mode="nearest")
    image = A.hu_to_uint8(image, *prep.hu_window)
    image, mask, offset = A.crop_to_anatomies(image, mask, prep.crop_margin, prep.min_size)
    boxes, counts = A.anatomy_boxes(mask, prep.num_anatomies)
    meta = {
        **row.get("source", {}),
        "orig_shape_xyz": [int(s) for s in row["image_xyz"].shape],
        "orig_spacing_DHW": [float(s) for s in spacing],
        "resampled_spacing_DHW": [float(s) for s in new_spacing],
        "crop_offset_DHW": [int(o) for o in offset],
    }
    out = {k: v for k, v in row.items() if k not in ("image_xyz", "mask_xyz", "affine", "source", "mask")}
    out.update(
        image=image,
        mask=mask,
        boxes=boxes,
        voxel_counts=counts,
        shape=np.asarray(image.shape, dtype=np.int32),
        spacing=np.asarray(new_spacing, dtype=np.float32),
        meta=meta,
    )
    return out


def process_row(row: Row, prep: VolumePrep) -> Row:
    """``prepare_row(decode_row(row))``: the whole CPU stage when masks are supplied."""
    return prepare_row(decode_row(row, prep), prep)


def map_rows(batch: Mapping[str, Sequence[Any]], fn: Callable[[Row], Row]) -> dict[str, list[Any]]:
    """Apply a row function to a column batch (``{column: values}``, Ray Data's numpy/pandas form).

    Rows whose ``fn`` raises :class:`VolumeError` keep their input columns and get ``error_kind``
    (the quarantine reason code) and ``error`` (the message, free of identifiers); successful rows
    get ``error_kind = ""``. The output is ``{column: list}`` with every column on every row (None
    where a row lacks it), which Ray Data accepts from ``map_batches``.
    """
    columns = list(batch)
    num_rows = len(batch[columns[0]]) if columns else 0
    rows_out: list[Row] = []
    for i in range(num_rows):
        row = {c: batch[c][i] for c in columns}
        try:
            res = fn(row)
            res.update(error_kind="", error="")
        except V.VolumeError as exc:
            res = dict(row, error_kind=exc.kind, error=str(exc))
        rows_out.append(res)
    keys: list[str] = []
    for r in rows_out:
        keys.extend(k for k in r if k not in keys)
    return {k: [r.get(k) for r in rows_out] for k in keys}

"""The ingest transform and NIfTI read of the merge base of issue 25, kept as the reference that
the current ones are compared with (``tests/ingest/test_process.py``) and measured beside
(``bench/ingest.py``): window at native resolution -> canonical copy -> group -> resample the
window (trilinear image, nearest mask) -> HU window -> crop + pad -> boxes; voxels copied out of
the decompressed bytes by nibabel; gzip inflated by ``igzip.decompress``."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from typing import Any
from unittest import mock

import nibabel as nib
import numpy as np
from scipy import ndimage

from ctvlp import anatomy
from ctvlp.data.codec import encode_volume
from ctvlp.transforms import array as T
from ctvlp.transforms import io, validate
from ingest import process
from ctvlp.transforms.study import StudyConfig as StageConfig, _integer_mask, _lut


def _native_window(mask_xyz: np.ndarray, affine: np.ndarray, lut: np.ndarray, cfg: StageConfig) -> tuple[slice, ...]:
    """``ingest.process._native_window`` as it was: every class's box by ``find_objects``."""
    ids = np.flatnonzero(lut)
    flip = mask_xyz.flags.f_contiguous and not mask_xyz.flags.c_contiguous
    found = ndimage.find_objects(mask_xyz.T if flip else mask_xyz, max_label=int(ids.max()))
    boxes = [found[i - 1][::-1] if flip else found[i - 1]
             for i in ids if i - 1 < len(found) and found[i - 1] is not None]
    if not boxes:
        raise validate.VolumeError("empty_mask", "no voxel of any anatomy of the grouping")
    ornt = nib.orientations.io_orientation(affine)
    zooms = T.voxel_sizes(affine)
    out = []
    for ax in range(3):
        lo, hi = min(b[ax].start for b in boxes), max(b[ax].stop for b in boxes)
        dhw = 2 - int(ornt[ax, 0])
        scale = cfg.spacing[dhw] / zooms[ax]
        need = max(hi - lo + 2 * cfg.crop_margin[dhw] * scale, cfg.min_size[dhw] * scale)
        extra = int(math.ceil((need - (hi - lo)) / 2 + 2 * scale + 2))
        out.append(slice(max(0, lo - extra), min(mask_xyz.shape[ax], hi + extra)))
    return tuple(out)


def transform(image_xyz, affine, mask_xyz, cfg: StageConfig) -> dict[str, Any]:
    """``ingest.process.transform`` as it was: the whole native window resampled, then cropped."""
    validate.check_spacing(T.voxel_sizes(affine))
    lut = _lut(json.dumps(cfg.grouping))
    mask_xyz = _integer_mask(mask_xyz)
    validate.check_mask_labels(mask_xyz, max(anatomy.ts_total_classes()))
    window = _native_window(mask_xyz, affine, lut, cfg)
    shift = np.eye(4)
    shift[:3, 3] = [w.start for w in window]
    crop_affine = affine @ shift
    image, spacing = T.to_canonical(image_xyz[window], crop_affine)
    grouped = group_mask(mask_xyz[window].T, lut).T
    mask, _ = T.to_canonical(grouped, crop_affine)
    image, out_spacing = T.resample(image, spacing, cfg.spacing, mode="trilinear")
    mask, _ = T.resample(mask, spacing, cfg.spacing, mode="nearest")
    image = T.hu_to_uint8(image, *cfg.hu_window)
    image, mask, _ = T.crop_to_anatomies(image, mask, cfg.crop_margin, cfg.min_size)
    boxes, counts = anatomy_boxes(mask, len(cfg.grouping))
    return {"image": image, "mask": mask, "spacing": out_spacing, "boxes": boxes, "counts": counts,
            "orig_spacing": T.voxel_sizes(affine).tolist(),
            "orig_shape": tuple(int(s) for s in image_xyz.shape)}


def anatomy_boxes(mask: np.ndarray, num_anatomies: int) -> tuple[np.ndarray, np.ndarray]:
    """``ctvlp.transforms.array.anatomy_boxes`` as it was: numpy's bincount."""
    counts = np.bincount(mask.ravel(), minlength=num_anatomies + 1)[1 : num_anatomies + 1]
    boxes = np.full((num_anatomies, 6), -1, dtype=np.int32)
    for j, sl in enumerate(ndimage.find_objects(mask, max_label=num_anatomies)):
        if sl is not None:
            boxes[j] = [sl[0].start, sl[0].stop, sl[1].start, sl[1].stop, sl[2].start, sl[2].stop]
    return boxes, counts.astype(np.int64)


def _copied_voxels(raw: bytes, img: Any) -> np.ndarray:
    return np.asarray(img.dataobj.get_unscaled())


def group_mask(raw_mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``ctvlp.transforms.array.group_mask`` as it was (integer masks): numpy's take."""
    lo, hi = int(raw_mask.min()), int(raw_mask.max())
    if lo < 0 or hi >= len(lut):
        raise validate.VolumeError("mask_mismatch", f"mask labels span [{lo}, {hi}], outside [0, {len(lut) - 1}]")
    return np.take(lut, raw_mask)


def _igzip(raw: bytes) -> bytes:
    from isal.igzip import decompress

    return decompress(raw)


def _encode_zstd3(volume: np.ndarray, codec: str = "zstd", level: int | None = 3) -> bytes:
    return encode_volume(volume, codec, 3 if codec == "zstd" else level)


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Within the block, ``ingest.process`` reads, transforms and encodes as the reference does
    (gzip through ``igzip.decompress``; zstd at level 3, the default then)."""
    with mock.patch.object(process, "transform", transform), mock.patch.object(io, "_voxels", _copied_voxels), \
            mock.patch.object(io, "_gunzip", _igzip), mock.patch.object(process, "encode_volume", _encode_zstd3):
        yield

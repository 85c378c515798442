"""Pure per-volume array transforms: reorient, resample, HU window, anatomy boxes, crop/pad.

Conventions (docs/DESIGN.md): after :func:`to_canonical` every volume is a numpy array in
``(D, H, W) = (z, y, x)`` order of the RAS+ orientation, i.e. D runs inferior->superior, H
posterior->anterior, W patient's left->right (``nibabel.as_closest_canonical`` then a transpose).
Every 3-tuple (spacing, margin, size) is in (D, H, W) order. Grouped masks hold value ``j + 1`` for
anatomy ``j`` and 0 for background. Functions never modify their inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ctvlp.transforms.validate import VolumeError, check_mask_nonempty

_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) of each array axis of ``affine`` ``[4, 4]``: column norms, shape [3]."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def apply_rescale(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """``raw * slope + inter`` (DICOM rescale, NIfTI scl_*): the input itself for the identity,
    int16 when integral and in range, else float32 (never float64). Same shape as ``raw``."""
    # Keep int16 when the scaling is integral and the result fits (typical CT: slope 1, inter -1024):
    # half the memory of float32 through the rest of the pipeline.
    if slope == 1.0 and inter == 0.0:
        return raw
    if np.issubdtype(raw.dtype, np.integer) and float(slope).is_integer() and float(inter).is_integer():
        ends = (int(raw.min()) * int(slope) + int(inter), int(raw.max()) * int(slope) + int(inter))
        if -32768 <= min(ends) and max(ends) <= 32767:  # Python ints: no uint16/int16 overflow
            scaled = raw.astype(np.int32) * int(slope) + int(inter)
            return scaled.astype(np.int16)
    out = raw.astype(np.float32)
    out *= np.float32(slope)
    out += np.float32(inter)
    return out


def to_canonical(array_xyz: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """:func:`canonical_view`, copied into a C-contiguous array."""
    view, spacing = canonical_view(array_xyz, affine)
    return np.ascontiguousarray(view), spacing


def canonical_view(array_xyz: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """Reorient a stored volume to RAS+ and transpose it to (D, H, W), as a view (no copy).

    Same axis permutation and flips as ``nibabel.as_closest_canonical``, applied to the array
    alone (no image object, so masks and images go through the identical code path). Oblique
    acquisitions are snapped to the closest axis-aligned orientation, as nibabel does.

    Args:
        array_xyz: ``[X, Y, Z]`` voxels as stored (any dtype; image or mask).
        affine: ``[4, 4]`` voxel -> RAS world matrix of the stored array.

    Returns:
        ``(array_DHW, spacing_DHW)``: a ``[D, H, W]`` view of the input (flips and a transpose) and
        the voxel spacing in mm, both in (z, y, x) order.
    """
    if array_xyz.ndim != 3:
        raise VolumeError("not_3d", f"expected a 3D volume, got shape {tuple(array_xyz.shape)}")
    ornt = nib.orientations.io_orientation(affine)  # [3, 2]: (target RAS axis, flip) per input axis
    transform = nib.orientations.ornt_transform(ornt, _RAS)
    ras = nib.orientations.apply_orientation(array_xyz, transform)  # a view: flips + transpose
    zooms = voxel_sizes(affine)
    spacing_ras = np.empty(3)
    spacing_ras[ornt[:, 0].astype(int)] = zooms  # RAS axis ornt[i, 0] comes from stored axis i
    return ras.transpose(2, 1, 0), tuple(float(s) for s in spacing_ras[::-1])  # (x, y, z) -> (z, y, x)


def resampled_shape(
    shape_DHW: Sequence[int], spacing_DHW: Sequence[float], target_spacing_DHW: Sequence[float]
) -> tuple[int, int, int]:
    """Output grid ``round(n * spacing / target)`` per axis (at least 1): the extent is kept."""
    return tuple(
        max(1, int(round(n * s / t)))
        for n, s, t in zip(shape_DHW, spacing_DHW, target_spacing_DHW, strict=True)
    )


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    # Voxel-centre mapping (PyTorch's "nearest-exact"): out o samples in floor((o + 0.5) * n_in / n_out).
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp)
    return np.minimum(idx, n_in - 1)


def resample(
    array_DHW: np.ndarray,
    spacing_DHW: Sequence[float],
    target_spacing_DHW: Sequence[float],
    mode: str = "trilinear",
    backend: str = "torch",
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Resample a ``[D, H, W]`` volume to ``target_spacing_DHW`` (mm) keeping its physical extent.

    Sample positions follow ``align_corners=False`` (voxel centres), as MONAI ``Resize`` and the
    released fVLM ``Resized`` do; the output shape is :func:`resampled_shape`.

    Args:
        array_DHW: image (any real dtype) or integer mask.
        mode: ``"trilinear"`` for images (float32 output) or ``"nearest"`` for masks (dtype kept).
        backend: trilinear implementation, ``"torch"`` (``F.interpolate``, the measured hot path,
            bench/results/transforms.json) or ``"monai"`` (``monai.transforms.Resize``, same maths).
            Nearest always gathers with numpy indices: an exact copy of voxels, no float round trip.

    Returns:
        ``(resampled_DHW, actual_spacing_DHW)``; the actual spacing is ``n_in * spacing / n_out``,
        which differs from the target by the rounding of the shape.
    """
    if array_DHW.ndim != 3:
        raise ValueError(f"resample expects a [D, H, W] array, got shape {array_DHW.shape}")
    out_shape = resampled_shape(array_DHW.shape, spacing_DHW, target_spacing_DHW)
    actual = tuple(
        float(n * s / o) for n, s, o in zip(array_DHW.shape, spacing_DHW, out_shape, strict=True)
    )
    if mode == "nearest":
        out = array_DHW
        for axis, (n_in, n_out) in enumerate(zip(array_DHW.shape, out_shape, strict=True)):
            if n_in != n_out:  # one take per axis: cheaper than a 3-axis np.ix_ gather
                out = np.take(out, _nearest_indices(n_in, n_out), axis=axis)
        return np.ascontiguousarray(out), actual
    if mode != "trilinear":
        raise ValueError(f"mode must be 'trilinear' or 'nearest', got {mode!r}")
    src = torch.from_numpy(np.ascontiguousarray(array_DHW, dtype=np.float32))[None, None]
    if backend == "torch":
        out_t = F.interpolate(src, size=out_shape, mode="trilinear", align_corners=False)[0, 0]
    elif backend == "monai":
        from monai.transforms import Resize  # imported lazily: MONAI's import costs ~1 s

        resize = Resize(out_shape, mode="trilinear", align_corners=False, dtype=torch.float32)
        out_t = torch.as_tensor(resize(src[0]))[0]
    else:
        raise ValueError(f"backend must be 'torch' or 'monai', got {backend!r}")
    return out_t.numpy(), actual


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # F.interpolate's linear taps (align_corners=False, size given), in its float32 arithmetic:
    # src = max(0, (o + 0.5) * n_in / n_out - 0.5); out o = (1 - w) * x[i0] + w * x[i1].
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), np.clip(src - i0, 0.0, 1.0).astype(np.float32)


def _outer_linear(src: np.ndarray, n_out: int, scale: np.float32) -> np.ndarray:
    """``scale *`` linear resampling of axis 0 of ``src`` ``[N, A, B]`` (any real dtype, any
    positive strides) to float32 ``[n_out, A, B]``: two planes read per output plane, converted
    to float32 as they are multiplied (no float copy of the input)."""
    i0, i1, w1 = _linear_taps(src.shape[0], n_out)
    out = np.empty((n_out, *src.shape[1:]), np.float32)
    tmp = np.empty(src.shape[1:], np.float32)
    for k in range(n_out):
        np.multiply(src[i0[k]], scale * (np.float32(1.0) - w1[k]), out=out[k])
        if w1[k] > 0:
            np.multiply(src[i1[k]], scale * w1[k], out=tmp)
            out[k] += tmp
    return out


def resample_hu_to_uint8(
    array_DHW: np.ndarray,
    spacing_DHW: Sequence[float],
    target_spacing_DHW: Sequence[float],
    lo: float,
    hi: float,
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``hu_to_uint8(resample(x, spacing, target, "trilinear")[0], lo, hi)`` in separable passes,
    without the float32 copy of the input (ingest's hot path; within 1 uint8 level of it).

    Trilinear weights are a product of one linear weight per axis, so the resampling is done
    axis by axis in the input's memory order: flipped axes are resampled unflipped (with
    ``align_corners=False`` and edge clamping at both ends, resampling commutes with a flip),
    the outermost axis blends whole planes read straight from the stored dtype
    (:func:`_outer_linear`, with the window's scale folded in: interpolation commutes with an
    affine map), the two inner axes go through ``F.interpolate(mode="bilinear")`` on the
    contiguous float32 planes, then offset, clip to 0..255 and round. Measured on a 223 x 325 x
    442 int16 window: 0.10 s instead of 0.25 s (float copy, trilinear, window) per volume.

    Args:
        array_DHW: ``[D, H, W]`` HU (any real dtype; a strided view such as :func:`canonical_view`'s).
        spacing_DHW / target_spacing_DHW: mm, as :func:`resample`; lo, hi: the HU window.

    Returns:
        ``(uint8 [D', H', W'] (a flipped/transposed view of a new array), actual spacing)``, the
        shape and spacing of :func:`resample`.
    """
    if not hi > lo:
        raise ValueError(f"HU window needs lo < hi, got ({lo}, {hi})")
    if array_DHW.ndim != 3:
        raise ValueError(f"resample expects a [D, H, W] array, got shape {array_DHW.shape}")
    out_shape = resampled_shape(array_DHW.shape, spacing_DHW, target_spacing_DHW)
    actual = tuple(float(n * s / o) for n, s, o in zip(array_DHW.shape, spacing_DHW, out_shape, strict=True))
    flips = tuple(ax for ax in range(3) if array_DHW.strides[ax] < 0)
    src = np.flip(array_DHW, flips) if flips else array_DHW
    order = sorted(range(3), key=lambda ax: -src.strides[ax])  # outermost memory axis first
    src, size = src.transpose(order), [out_shape[ax] for ax in order]
    scale = np.float32(255.0 / (hi - lo))
    planes = torch.from_numpy(_outer_linear(src, size[0], scale))
    if tuple(size[1:]) != tuple(planes.shape[1:]):
        planes = F.interpolate(planes[:, None], size=tuple(size[1:]), mode="bilinear", align_corners=False)[:, 0]
    planes.sub_(float(lo) * float(scale)).clamp_(0.0, 255.0).round_()
    out = planes.to(torch.uint8).numpy().transpose(np.argsort(order))
    return (np.flip(out, flips) if flips else out), actual


def hu_window(array_hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip Hounsfield units to ``[lo, hi]`` and scale linearly to float32 ``[0, 1]``.

    ``out = clip((x - lo) / (hi - lo), 0, 1)``; same shape as the input.
    """
    if not hi > lo:
        raise ValueError(f"HU window needs lo < hi, got ({lo}, {hi})")
    out = np.asarray(array_hu, dtype=np.float32) - np.float32(lo)  # a new array: input untouched
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def to_uint8(array01: np.ndarray) -> np.ndarray:
    """Map ``[0, 1]`` floats to uint8 ``round(255 * x)`` (values outside are clipped first)."""
    out = np.clip(np.asarray(array01, dtype=np.float32), 0.0, 1.0) * np.float32(255.0)
    return np.rint(out, out=out).astype(np.uint8)


def hu_to_uint8(array_hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``to_uint8(hu_window(x, lo, hi))`` in one pass with one float32 temporary (the hot path)."""
    if not hi > lo:
        raise ValueError(f"HU window needs lo < hi, got ({lo}, {hi})")
    scale = np.float32(255.0 / (hi - lo))
    out = np.asarray(array_hu, dtype=np.float32) - np.float32(lo)
    out *= scale
    np.clip(out, 0.0, 255.0, out=out)
    return np.rint(out, out=out).astype(np.uint8)


def group_mask(raw_mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map raw TotalSegmentator ids to grouped anatomy ids: ``lut[raw_mask]`` (uint8, same shape).

    Args:
        raw_mask: integer array of TotalSegmentator v2 ``total`` ids (0..117).
        lut: ``ctvlp.anatomy.group_lut(grouping)`` (length 256).
    """
    if not np.issubdtype(raw_mask.dtype, np.integer):
        if not np.array_equal(raw_mask, np.round(raw_mask)):
            raise VolumeError("mask_mismatch", f"mask holds non-integer values ({raw_mask.dtype})")
        raw_mask = raw_mask.astype(np.int32)
    lo, hi = int(raw_mask.min()), int(raw_mask.max())
    if lo < 0 or hi >= len(lut):
        raise VolumeError("mask_mismatch", f"mask labels span [{lo}, {hi}], outside [0, {len(lut) - 1}]")
    return lookup(lut, raw_mask)


def lookup(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``table[values]`` (same shape as ``values``, ``table``'s dtype) for index arrays in range.

    A uint8 array into a 256-entry uint8 table goes through Arrow's ``take`` kernel on the
    array's memory (no copy for a C- or F-contiguous array): numpy's ``take`` first widens
    every index to int64, which made it 5x slower on 10-80M-voxel masks.
    """
    table = np.asarray(table)
    if values.dtype != np.uint8 or table.dtype != np.uint8 or len(table) != 256 \
            or not (values.flags.c_contiguous or values.flags.f_contiguous):
        return np.take(table, values)
    import pyarrow as pa
    import pyarrow.compute as pc

    flat = values.T if values.flags.f_contiguous and not values.flags.c_contiguous else values
    out = pc.take(pa.array(table), pa.array(flat.reshape(-1))).to_numpy(zero_copy_only=False)
    out = out.reshape(flat.shape)
    return out.T if flat is not values else out


def anatomy_boxes(grouped_mask_DHW: np.ndarray, num_anatomies: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-anatomy bounding boxes and voxel counts of a grouped mask, in one pass each.

    Args:
        grouped_mask_DHW: ``[D, H, W]`` integer mask, values in ``0..M``.
        num_anatomies: M.

    Returns:
        ``boxes`` int32 ``[M, 6]`` rows ``(d0, d1, h0, h1, w0, w1)`` half-open, all ``-1`` when the
        anatomy is absent, and ``voxel_counts`` int64 ``[M]``.
    """
    mask = grouped_mask_DHW
    if mask.ndim != 3 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"expected an integer [D, H, W] mask, got {mask.dtype} {mask.shape}")
    if mask.size and int(mask.max()) > num_anatomies:
        raise ValueError(f"mask value {int(mask.max())} exceeds num_anatomies={num_anatomies}")
    flat = np.ascontiguousarray(mask).reshape(-1)
    if mask.dtype == np.uint8:  # torch counts uint8 as it is; numpy widens to int64 (3x the time)
        with warnings.catch_warnings():  # a read-only array (Arrow's lookup output): only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            counts = torch.bincount(torch.from_numpy(flat), minlength=num_anatomies + 1).numpy()
    else:
        counts = np.bincount(flat, minlength=num_anatomies + 1)
    counts = counts[1 : num_anatomies + 1]
    boxes = np.full((num_anatomies, 6), -1, dtype=np.int32)
    # find_objects: one scan, the slice box of each label 1..M (None when absent).
    for j, sl in enumerate(ndimage.find_objects(mask, max_label=num_anatomies)):
        if sl is not None:
            boxes[j] = [sl[0].start, sl[0].stop, sl[1].start, sl[1].stop, sl[2].start, sl[2].stop]
    return boxes, counts.astype(np.int64)


def _window_1d(lo: int, hi: int, margin: int, min_size: int, n: int) -> tuple[int, int, int, int]:
    # Box [lo, hi) + margin, grown around its centre to min_size using real voxels where the volume
    # has them; returns (start, stop) inside the volume and the (before, after) zero padding.
    start, stop = max(0, lo - margin), min(n, hi + margin)
    if stop - start < min_size:
        target = min(min_size, n)  # as many real voxels as the volume has
        start = start - (target - (stop - start)) // 2
        start = max(0, min(start, n - target))  # shift the window back inside [0, n)
        stop = start + target
    pad = max(0, min_size - (stop - start))
    return start, stop, pad // 2, pad - pad // 2


def union_box(boxes: np.ndarray) -> tuple[slice, ...]:
    """The union of the present rows of :func:`anatomy_boxes`' ``boxes`` ``[M, 6]`` as 3 slices.

    Raises:
        VolumeError(empty_mask): no anatomy is present.
    """
    present = np.asarray(boxes)[np.asarray(boxes)[:, 0] >= 0]
    if len(present) == 0:
        raise VolumeError("empty_mask", "no voxel of any anatomy of the grouping")
    return tuple(slice(int(present[:, 2 * ax].min()), int(present[:, 2 * ax + 1].max())) for ax in range(3))


def crop_window(
    union: Sequence[slice], shape_DHW: Sequence[int], margin_DHW: Sequence[int], min_size_DHW: Sequence[int]
) -> tuple[tuple[slice, ...], list[tuple[int, int]], tuple[int, int, int]]:
    """Where :func:`crop_to_anatomies` cuts: ``(slices inside the volume, (before, after) zero
    padding per axis, offset)`` for the union box ``union`` of a ``shape_DHW`` volume."""
    slices, pads, offset = [], [], []
    for ax in range(3):
        start, stop, before, after = _window_1d(
            union[ax].start, union[ax].stop, int(margin_DHW[ax]), int(min_size_DHW[ax]), int(shape_DHW[ax])
        )
        slices.append(slice(start, stop))
        pads.append((before, after))
        offset.append(start - before)
    return tuple(slices), pads, tuple(offset)


def crop_to_anatomies(
    image_DHW: np.ndarray,
    mask_DHW: np.ndarray,
    margin_DHW: Sequence[int],
    min_size_DHW: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Crop image and grouped mask to the union box of all anatomies plus a margin, pad to a minimum.

    As fVLM's preprocess (box of all mask voxels, margin, ``SpatialPad``) with one change: when the
    margined box is smaller than ``min_size_DHW`` it first grows into the real image around the box,
    and pads (symmetrically, image 0 = air after windowing, mask 0) only what the volume lacks.

    Args:
        image_DHW: ``[D, H, W]`` windowed image (float in [0, 1] or uint8).
        mask_DHW: ``[D, H, W]`` grouped mask, same shape.
        margin_DHW: voxels added on each side of the union box, per axis.
        min_size_DHW: minimum output size per axis.

    Returns:
        ``(image_crop, mask_crop, offset_DHW)``; voxel ``c`` of the crop is voxel ``c + offset`` of
        the input (offsets are negative where padding was added before).
    """
    if image_DHW.shape != mask_DHW.shape or image_DHW.ndim != 3:
        raise VolumeError(
            "mask_mismatch", f"image {image_DHW.shape} and mask {mask_DHW.shape} differ or not 3D"
        )
    check_mask_nonempty(mask_DHW)
    union = ndimage.find_objects((mask_DHW > 0).view(np.uint8))[0]
    slices, pads, offset = crop_window(union, mask_DHW.shape, margin_DHW, min_size_DHW)
    img, msk = image_DHW[slices], mask_DHW[slices]
    if any(p != (0, 0) for p in pads):
        img = np.pad(img, pads, mode="constant", constant_values=0)
        msk = np.pad(msk, pads, mode="constant", constant_values=0)
    return np.ascontiguousarray(img), np.ascontiguousarray(msk), tuple(offset)

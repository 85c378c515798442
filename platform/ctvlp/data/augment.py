"""Train-time augmentation on decoded samples: random crop to the preset's crop size, random flips.

As the released fVLM processor (``RandSpatialCrop(crop_size)`` + ``RandFlip(p)`` per axis,
method.md section 5.2), on uint8 arrays so that a sample stays 1 byte per voxel until collate.
Written with numpy slicing rather than MONAI's ``RandSpatialCropd``/``RandFlipd`` because image and
mask must share one random draw from an explicit ``numpy.random.Generator`` (reproducible per
worker and seed) and a slice is a zero-copy view: MONAI would copy into a MetaTensor twice.

Which anatomies "count" after a crop is decided by :func:`intact_anatomies`: an anatomy is intact
when it is present in the crop and none of its voxels lies on any of the crop's 6 faces (the
paper's "only complete organs within the patch"; fVLM ``vit.py`` 123-143).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _pad_to(image: np.ndarray, mask: np.ndarray, crop_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be equal [D, H, W]")
    pads = [(0, max(0, c - n)) for n, c in zip(image.shape, crop_size, strict=True)]
    if any(p[1] for p in pads):
        image, mask = np.pad(image, pads), np.pad(mask, pads)
    return image, mask


def random_window(shape: Sequence[int], crop_size: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
    """Uniform start ``(d, h, w)`` of a ``crop_size`` window inside ``shape`` (one draw per axis)."""
    return tuple(int(rng.integers(0, n - c + 1)) for n, c in zip(shape, crop_size))


def random_crop(
    image: np.ndarray, mask: np.ndarray, crop_size: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly placed ``crop_size`` window of image and mask (same window for both).

    Axes shorter than the crop are zero-padded at the end first (0 = air after windowing,
    background in the mask); ingest pads stored crops to ``min_size`` so this is rare.

    Args:
        image, mask: ``[D, H, W]`` arrays of the same shape.
        crop_size: ``(D, H, W)`` output size.
    """
    image, mask = _pad_to(image, mask, crop_size)
    starts = random_window(image.shape, crop_size, rng)
    window = tuple(slice(s, s + c) for s, c in zip(starts, crop_size))
    return image[window], mask[window]


def random_flip(
    image: np.ndarray, mask: np.ndarray, prob: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip image and mask together along each of the 3 axes independently with ``prob``."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"flip probability must be in [0, 1], got {prob}")
    axes = tuple(ax for ax in range(3) if rng.random() < prob)
    if axes:
        image, mask = np.flip(image, axes), np.flip(mask, axes)
    return image, mask


def intact_anatomies(mask: np.ndarray, num_anatomies: int) -> np.ndarray:
    """bool ``[M]``: anatomy j (mask value j+1) is present and touches no face of ``mask``."""
    present = np.bincount(mask.ravel(), minlength=num_anatomies + 1)[1 : num_anatomies + 1] > 0
    faces = [mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]]
    on_face = np.zeros(num_anatomies + 1, dtype=bool)
    for f in faces:
        on_face[np.unique(f)] = True
    return present & ~on_face[1:]


def intact_in_window(mask_crop: np.ndarray, boxes: np.ndarray, starts: Sequence[int]) -> np.ndarray:
    """:func:`intact_anatomies` of a crop, from the stored boxes where they decide it.

    An anatomy whose stored box lies strictly inside the window is intact (all its voxels are
    inside, none on a face); one whose box misses the window is absent. Only anatomies whose box
    reaches a face of the window are looked up in the crop's voxels (its six faces, then the
    box's part of the crop), so the usual case costs no pass over the ~10M-voxel crop.

    Args:
        mask_crop: ``[d, h, w]`` grouped mask of the window (values j + 1 for anatomy j).
        boxes: int ``[M, 6]`` tight half-open boxes ``(d0, d1, h0, h1, w0, w1)`` of the stored
            crop the window was cut from (all -1 when absent), as ``decode_sample`` returns them.
        starts: the window's start ``(d, h, w)`` in the stored crop.

    Returns:
        bool ``[M]``, equal to ``intact_anatomies(mask_crop, M)``.
    """
    shape, starts = np.asarray(mask_crop.shape), np.asarray(starts)
    out = np.zeros(len(boxes), dtype=bool)
    faces = None
    for j, box in enumerate(np.asarray(boxes)):
        if box[0] < 0:
            continue
        lo, hi = box[0::2] - starts, box[1::2] - starts  # the box in window coordinates
        if (hi <= 0).any() or (lo >= shape).any():
            continue  # outside the window
        if (lo > 0).all() and (hi < shape).all():
            out[j] = True  # strictly inside: complete, touching no face
            continue
        if faces is None:
            faces = np.unique(np.concatenate([f.ravel() for f in (
                mask_crop[0], mask_crop[-1], mask_crop[:, 0], mask_crop[:, -1],
                mask_crop[:, :, 0], mask_crop[:, :, -1])]))
        if j + 1 in faces:
            continue
        part = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, shape))
        out[j] = bool((mask_crop[part] == j + 1).any())
    return out


def train_augment(
    sample: dict[str, Any], crop_size: Sequence[int], flip_prob: float, rng: np.random.Generator
) -> dict[str, Any]:
    """Random crop + flips of a :func:`ctvlp.data.codec.decode_sample` output (a new dict).

    ``image``/``mask`` become ``crop_size`` uint8 views; ``intact`` bool ``[M]`` is added (from
    the stored boxes when the sample has them, :func:`intact_in_window`). Boxes and voxel counts
    describe the stored crop and are left as they are.
    """
    image, mask = _pad_to(sample["image"], sample["mask"], crop_size)
    starts = random_window(image.shape, crop_size, rng)  # the same draws as random_crop
    window = tuple(slice(s, s + c) for s, c in zip(starts, crop_size))
    image, mask = image[window], mask[window]
    num_anatomies = len(sample["abnormal"])
    boxes = sample.get("boxes")
    if boxes is not None and np.shape(boxes) == (num_anatomies, 6):
        intact = intact_in_window(mask, boxes, starts)
    else:
        intact = intact_anatomies(mask, num_anatomies)
    out = dict(sample)
    out["image"], out["mask"] = random_flip(image, mask, flip_prob, rng)
    out["intact"] = intact  # flips map faces to faces: the flags do not change
    return out

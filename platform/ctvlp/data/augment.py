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
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be equal [D, H, W]")
    pads = [(0, max(0, c - n)) for n, c in zip(image.shape, crop_size, strict=True)]
    if any(p[1] for p in pads):
        image, mask = np.pad(image, pads), np.pad(mask, pads)
    starts = [int(rng.integers(0, n - c + 1)) for n, c in zip(image.shape, crop_size)]
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


def train_augment(
    sample: dict[str, Any], crop_size: Sequence[int], flip_prob: float, rng: np.random.Generator
) -> dict[str, Any]:
    """Random crop + flips of a :func:`ctvlp.data.codec.decode_sample` output (a new dict).

    ``image``/``mask`` become ``crop_size`` uint8 views; ``intact`` bool ``[M]`` is added. Boxes
    and voxel counts describe the stored crop and are left as they are.
    """
    image, mask = random_crop(sample["image"], sample["mask"], crop_size, rng)
    image, mask = random_flip(image, mask, flip_prob, rng)
    out = dict(sample)
    out["image"], out["mask"] = image, mask
    out["intact"] = intact_anatomies(mask, len(sample["abnormal"]))
    return out

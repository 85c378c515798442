"""Input checks for CT volumes and masks; each failure becomes a quarantine reason in ingest.

Every check raises :class:`VolumeError` (a ``ValueError``) whose ``kind`` is a short stable code
(the quarantine table's ``reason`` column) and whose message says what was wrong with numbers but
never with patient identifiers, so it is safe to log. Kinds:

=================  ===============================================================
``unreadable``     not a NIfTI/DICOM file, or the decoder failed
``truncated``      gzip stream or voxel data ends early
``not_3d``         the image is not a 3D volume
``nonfinite``      NaN or inf voxels
``not_ct``         DICOM Modality is not CT, or the HU range is implausible for CT
``bad_spacing``    voxel spacing outside [0.1, 20] mm, or inconsistent DICOM slice spacing
``empty_mask``     no anatomy of the grouping present in the mask
``mask_mismatch``  mask shape or affine differs from the image's
``mask_labels``    mask values outside the TotalSegmentator v2 ``total`` class map
``too_small``      fewer slices or a smaller field of view than the spec's minimum
``oblique``        voxel axes tilted from the patient axes beyond the spec's threshold
=================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0
# A CT volume holds air (about -1000 HU) and soft tissue or bone (> 200 HU); a volume without
# either is a different modality, an already-windowed export, or a blank scan.
CT_MAX_AT_LEAST = 200.0
CT_MIN_AT_MOST = -500.0


class VolumeError(ValueError):
    """A bad input volume or mask. ``kind`` is the quarantine reason code (see module doc)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def ensure_3d(array: np.ndarray) -> np.ndarray:
    """Return ``array`` as 3D, dropping trailing singleton axes (NIfTI often stores ``[X,Y,Z,1]``).

    Raises:
        VolumeError(not_3d): fewer than 3 axes, or more than 3 non-singleton ones.
    """
    squeezed = array
    while squeezed.ndim > 3 and squeezed.shape[-1] == 1:
        squeezed = squeezed[..., 0]
    if squeezed.ndim != 3:
        raise VolumeError("not_3d", f"expected a 3D volume, got shape {tuple(array.shape)}")
    if min(squeezed.shape) < 1:
        raise VolumeError("not_3d", f"volume has an empty axis: shape {tuple(array.shape)}")
    return squeezed


def check_finite(array: np.ndarray) -> None:
    """Raise VolumeError(nonfinite) when a float volume holds NaN or inf voxels."""
    if not np.issubdtype(array.dtype, np.floating):
        return  # integer volumes cannot hold NaN/inf
    if not np.isfinite(array).all():
        num_nan = int(np.isnan(array).sum())
        num_inf = int(np.isinf(array).sum())
        raise VolumeError("nonfinite", f"{num_nan} NaN and {num_inf} inf voxels")


def check_ct_range(array: np.ndarray) -> tuple[float, float]:
    """Check that the intensities look like Hounsfield units; returns ``(min, max)``.

    Raises:
        VolumeError(not_ct): ``max < 200`` HU or ``min > -500`` HU.
    """
    lo, hi = float(array.min()), float(array.max())
    if hi < CT_MAX_AT_LEAST or lo > CT_MIN_AT_MOST:
        raise VolumeError(
            "not_ct",
            f"HU range [{lo:.0f}, {hi:.0f}] is implausible for CT "
            f"(need max >= {CT_MAX_AT_LEAST:.0f} and min <= {CT_MIN_AT_MOST:.0f})",
        )
    return lo, hi


def check_spacing(spacing: Sequence[float]) -> None:
    """Raise VolumeError(bad_spacing) unless each of the 3 spacings lies in [0.1, 20] mm."""
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,):
        raise VolumeError("bad_spacing", f"expected 3 spacings, got {sp.tolist()}")
    if not np.isfinite(sp).all() or (sp < MIN_SPACING_MM).any() or (sp > MAX_SPACING_MM).any():
        raise VolumeError(
            "bad_spacing",
            f"spacing {np.round(sp, 4).tolist()} mm outside [{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm",
        )


def check_mask_matches(
    mask_shape: Sequence[int],
    mask_affine: np.ndarray,
    image_shape: Sequence[int],
    image_affine: np.ndarray,
    atol_mm: float = 0.01,
) -> None:
    """Raise VolumeError(mask_mismatch) when a mask is not on the image's voxel grid.

    Args:
        mask_shape, image_shape: the 3D shapes as stored (before reorientation).
        mask_affine, image_affine: ``[4, 4]`` voxel -> world (mm) matrices.
        atol_mm: largest tolerated difference of any affine entry (writers round differently).
    """
    if tuple(mask_shape) != tuple(image_shape):
        raise VolumeError(
            "mask_mismatch", f"mask shape {tuple(mask_shape)} != image shape {tuple(image_shape)}"
        )
    diff = float(np.abs(np.asarray(mask_affine) - np.asarray(image_affine)).max())
    if diff > atol_mm:
        raise VolumeError(
            "mask_mismatch", f"mask affine differs from the image affine by up to {diff:.3f} mm"
        )


def check_mask_nonempty(grouped_mask: np.ndarray) -> None:
    """Raise VolumeError(empty_mask) when a grouped mask has no anatomy voxel."""
    if not grouped_mask.any():
        raise VolumeError("empty_mask", "no voxel of any anatomy of the grouping")


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis of ``affine`` ``[4, 4]`` and its closest
    world axis: 0 for an axis-aligned volume (flips and permutations included).

    Raises:
        VolumeError(bad_spacing): a zero or non-finite axis (the direction is undefined).
    """
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if not np.isfinite(cols).all() or (norms <= 0).any():
        raise VolumeError("bad_spacing", f"affine axis lengths {np.round(norms, 4).tolist()} mm: zero or not finite")
    cosines = np.abs(cols / norms).max(axis=0).clip(max=1.0)
    return float(np.degrees(np.arccos(cosines)).max())


def check_oblique(affine: np.ndarray, max_deg: float) -> float:
    """The obliquity of ``affine`` (:func:`obliquity_deg`); VolumeError(oblique) above ``max_deg``."""
    angle = obliquity_deg(affine)
    if angle > max_deg:
        raise VolumeError("oblique", f"voxel axes tilted {angle:.1f} deg from the patient axes (max {max_deg} deg)")
    return angle


def check_size(shape_dhw: Sequence[int], spacing_dhw: Sequence[float], min_slices: int,
               min_extent_mm: Sequence[float]) -> None:
    """Raise VolumeError(too_small) when D < ``min_slices`` or a field-of-view extent (shape x
    spacing, (D, H, W) mm) is below ``min_extent_mm``."""
    extent = np.asarray(shape_dhw, dtype=np.float64) * np.asarray(spacing_dhw, dtype=np.float64)
    if shape_dhw[0] < min_slices:
        raise VolumeError("too_small", f"{shape_dhw[0]} slices < {min_slices} (ingest.min_slices)")
    small = extent < np.asarray(min_extent_mm, dtype=np.float64)
    if small.any():
        raise VolumeError("too_small", f"field of view {np.round(extent, 1).tolist()} mm (D, H, W) below "
                                       f"{list(min_extent_mm)} mm (ingest.min_extent_mm)")


def check_mask_labels(mask: np.ndarray, max_id: int) -> None:
    """Raise VolumeError(mask_labels) when a raw mask holds values outside ``0..max_id``."""
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi > max_id:
        raise VolumeError("mask_labels", f"mask values span [{lo}, {hi}], the class map has ids 0..{max_id}")

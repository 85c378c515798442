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

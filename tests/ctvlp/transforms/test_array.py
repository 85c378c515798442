"""ctvlp.transforms.array: expected values by formula on tiny arrays (MONAI-style, table-driven)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctvlp.anatomy import CHEST, group_lut, ts_total_ids
from ctvlp.transforms import array as A
from ctvlp.transforms.validate import VolumeError

RNG = np.random.default_rng(0)
VOL = RNG.integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)  # [X, Y, Z]


def _perm_affine() -> np.ndarray:
    # stored axis 0 -> S (2 mm), axis 1 -> R flipped (0.5 mm), axis 2 -> A (1 mm)
    aff = np.zeros((4, 4))
    aff[2, 0], aff[0, 1], aff[1, 2], aff[3, 3] = 2.0, -0.5, 1.0, 1.0
    return aff


CANONICAL_CASES = [
    # (affine, expected [D,H,W] by formula, expected spacing DHW)
    (np.diag([0.7, 0.8, 2.5, 1.0]), VOL.transpose(2, 1, 0), (2.5, 0.8, 0.7)),
    (np.diag([-0.7, -0.8, 2.5, 1.0]), VOL[::-1, ::-1, :].transpose(2, 1, 0), (2.5, 0.8, 0.7)),
    (np.diag([0.7, 0.8, -2.5, 1.0]), VOL[:, :, ::-1].transpose(2, 1, 0), (2.5, 0.8, 0.7)),
    # RAS axes come from stored (1 flipped, 2, 0): [D,H,W] = (S, A, R) = (axis0, axis2, axis1 flipped)
    (_perm_affine(), VOL[:, ::-1, :].transpose(0, 2, 1), (2.0, 1.0, 0.5)),
]


@pytest.mark.parametrize("affine,expected,spacing", CANONICAL_CASES)
def test_to_canonical_formula_and_nibabel_parity(affine, expected, spacing):
    out, sp = A.to_canonical(VOL, affine)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_allclose(sp, spacing)
    ref = nib.as_closest_canonical(nib.Nifti1Image(VOL, affine))
    np.testing.assert_array_equal(out, np.asarray(ref.dataobj).transpose(2, 1, 0))
    assert out.flags.c_contiguous and out.dtype == VOL.dtype


def test_resampled_shape_and_actual_spacing():
    assert A.resampled_shape((10, 20, 30), (3.0, 0.75, 0.7), (3.0, 1.5, 1.0)) == (10, 10, 21)
    _, actual = A.resample(np.zeros((10, 20, 30), np.float32), (3.0, 0.75, 0.7), (3.0, 1.5, 1.0))
    np.testing.assert_allclose(actual, (3.0, 1.5, 30 * 0.7 / 21))


RAMP = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None], (8, 3, 3))


@pytest.mark.parametrize("backend", ["torch", "monai"])
@pytest.mark.parametrize(
    "spacing,target,expected_d",
    [
        ((1.0, 1, 1), (1.0, 1, 1), np.arange(8.0)),  # same grid: exact copy
        ((1.0, 1, 1), (2.0, 1, 1), 2 * np.arange(4.0) + 0.5),  # centres at 2o + 0.5
        ((1.0, 1, 1), (0.5, 1, 1), np.clip(np.arange(16) / 2 - 0.25, 0, 7)),  # o/2 - 1/4, clamped
    ],
)
def test_resample_trilinear_on_a_ramp(backend, spacing, target, expected_d):
    out, _ = A.resample(RAMP, spacing, target, mode="trilinear", backend=backend)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 1, 1], expected_d, atol=1e-5)


def test_resample_monai_matches_torch_on_random_volume():
    vol = RNG.normal(size=(9, 11, 13)).astype(np.float32)
    a, _ = A.resample(vol, (2.0, 0.7, 0.8), (3.0, 1.0, 1.0), backend="torch")
    b, _ = A.resample(vol, (2.0, 0.7, 0.8), (3.0, 1.0, 1.0), backend="monai")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_resample_nearest_keeps_labels_by_index_formula():
    mask = RNG.integers(0, 5, size=(7, 9, 10)).astype(np.uint8)
    out, _ = A.resample(mask, (1.0, 1.0, 1.0), (2.0, 0.5, 1.5), mode="nearest")
    assert out.dtype == np.uint8 and out.shape == (4, 18, 7)  # round(3.5)=4, 18, round(6.67)=7
    idx = [np.minimum(np.floor((np.arange(m) + 0.5) * n / m).astype(int), n - 1) for n, m in zip(mask.shape, out.shape)]
    np.testing.assert_array_equal(out, mask[np.ix_(*idx)])


def test_resample_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        A.resample(RAMP, (1, 1, 1), (1, 1, 1), mode="cubic")


@pytest.mark.parametrize(
    "hu,expected", [(-2000, 0.0), (-1000, 0.0), (0, 0.5), (500, 0.75), (1000, 1.0), (3000, 1.0)]
)
def test_hu_window_table(hu, expected):
    out = A.hu_window(np.array([hu], dtype=np.int16), -1000, 1000)
    assert out.dtype == np.float32 and out[0] == pytest.approx(expected)


def test_to_uint8_and_fused_hu_to_uint8_agree():
    np.testing.assert_array_equal(A.to_uint8(np.array([0.0, 0.5, 1.0, -1.0, 2.0])), [0, 128, 255, 0, 255])
    hu = RNG.integers(-1500, 1500, size=(6, 7, 8)).astype(np.int16)
    ref = A.to_uint8(A.hu_window(hu, -1150, 350))
    fused = A.hu_to_uint8(hu, -1150, 350)
    assert np.abs(ref.astype(int) - fused.astype(int)).max() <= 1  # float rounding at .5 only
    assert (ref == fused).mean() > 0.99
    with pytest.raises(ValueError, match="lo < hi"):
        A.hu_window(hu, 10, 10)


@pytest.mark.parametrize("affine", [c[0] for c in CANONICAL_CASES])
@pytest.mark.parametrize(
    "spacing,target",
    [((2.0, 0.7, 0.8), (3.0, 1.0, 1.0)),  # downsampling, as ingest (1.97 x 0.81 mm -> 3 x 1 mm)
     ((1.0, 1.0, 1.0), (0.4, 1.0, 2.5)),  # up, same, down
     ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))],  # same grid
)
def test_separable_resample_to_uint8_matches_trilinear_then_window(affine, spacing, target):
    # every orientation's view (flips, transposes, a window with gaps in its strides) and int16 input
    vol = RNG.integers(-1500, 1500, size=(12, 14, 16)).astype(np.int16)
    view = A.canonical_view(vol[1:11, 2:13, :15], affine)[0]
    out, actual = A.resample_hu_to_uint8(view, spacing, target, -1150, 350)
    ref_f, ref_actual = A.resample(view, spacing, target)
    ref = A.hu_to_uint8(ref_f, -1150, 350)
    assert out.dtype == np.uint8 and out.shape == ref.shape and actual == ref_actual
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float rounding at .5 only
    assert view.base is not None and np.array_equal(view, A.canonical_view(vol[1:11, 2:13, :15], affine)[0])
    with pytest.raises(ValueError, match="lo < hi"):
        A.resample_hu_to_uint8(view, spacing, target, 10, 10)


@pytest.mark.parametrize(
    "raw,slope,inter,dtype,expected",
    [
        (np.array([0, 1000], np.int16), 1, 0, np.int16, [0, 1000]),
        (np.array([0, 1000], np.uint16), 1, -1024, np.int16, [-1024, -24]),
        (np.array([0, 1000], np.int16), 0.5, 0, np.float32, [0, 500]),
        (np.array([0, 30000], np.int16), 2, 0, np.float32, [0, 60000]),  # int16 would overflow
    ],
)
def test_apply_rescale_dtype_and_values(raw, slope, inter, dtype, expected):
    out = A.apply_rescale(raw, slope, inter)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)


def test_group_mask_uses_the_lut():
    ids = ts_total_ids()
    raw = np.array([0, ids["lung_upper_lobe_left"], ids["heart"], ids["liver"], ids["aorta"]], np.uint8)
    np.testing.assert_array_equal(A.group_mask(raw, group_lut(CHEST)), [0, 1, 2, 0, 4])
    with pytest.raises(VolumeError, match="mask_mismatch"):
        A.group_mask(np.array([0.5]), group_lut(CHEST))
    with pytest.raises(VolumeError, match="outside"):
        A.group_mask(np.array([-1, 2]), group_lut(CHEST))


def test_anatomy_boxes_formula_and_naive_reference():
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:5, 3:9, 1:2] = 1
    mask[7, 0, 13] = 3
    boxes, counts = A.anatomy_boxes(mask, 4)
    np.testing.assert_array_equal(boxes, [[2, 5, 3, 9, 1, 2], [-1] * 6, [7, 8, 0, 1, 13, 14], [-1] * 6])
    np.testing.assert_array_equal(counts, [18, 0, 1, 0])
    rand = RNG.integers(0, 4, size=(6, 7, 8)).astype(np.uint8)
    boxes, counts = A.anatomy_boxes(rand, 3)
    for j in range(3):
        nz = np.nonzero(rand == j + 1)
        expected = [v for ax in nz for v in (ax.min(), ax.max() + 1)]
        np.testing.assert_array_equal(boxes[j], expected)
        assert counts[j] == len(nz[0])
    with pytest.raises(ValueError, match="exceeds"):
        A.anatomy_boxes(rand, 2)


def _crop_case(shape, box, margin, min_size):
    img = RNG.random(shape).astype(np.float32) + 0.1  # never 0, so padding is visible
    mask = np.zeros(shape, np.uint8)
    mask[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = 2
    return img, mask, A.crop_to_anatomies(img, mask, margin, min_size)


@pytest.mark.parametrize(
    "shape,box,margin,min_size,out_shape,offset",
    [
        ((20, 20, 20), (5, 10, 6, 8, 7, 9), (1, 2, 3), (2, 2, 2), (7, 6, 8), (4, 4, 4)),  # box + margin
        ((20, 20, 20), (0, 3, 17, 20, 5, 6), (2, 2, 0), (1, 1, 1), (5, 5, 1), (0, 15, 5)),  # clamped
        ((20, 20, 20), (9, 11, 9, 11, 9, 11), (0, 0, 0), (6, 6, 6), (6, 6, 6), (7, 7, 7)),  # grown inside
        ((4, 20, 20), (1, 3, 0, 2, 9, 10), (0, 0, 0), (8, 4, 1), (8, 4, 1), (-2, 0, 9)),  # padded
    ],
)
def test_crop_to_anatomies_table(shape, box, margin, min_size, out_shape, offset):
    img, mask, (ci, cm, off) = _crop_case(shape, box, margin, min_size)
    assert ci.shape == cm.shape == out_shape and off == offset
    for c in np.ndindex(*out_shape):
        src = tuple(ci_ + o for ci_, o in zip(c, off))
        inside = all(0 <= s < n for s, n in zip(src, shape))
        assert ci[c] == (img[src] if inside else 0) and cm[c] == (mask[src] if inside else 0)
    assert (cm == 2).sum() == (mask == 2).sum()  # the crop keeps every anatomy voxel


def test_crop_to_anatomies_rejects_empty_and_mismatched():
    img = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(VolumeError, match="empty_mask"):
        A.crop_to_anatomies(img, np.zeros((4, 4, 4), np.uint8), (0, 0, 0), (1, 1, 1))
    with pytest.raises(VolumeError, match="mask_mismatch"):
        A.crop_to_anatomies(img, np.ones((4, 4, 5), np.uint8), (0, 0, 0), (1, 1, 1))

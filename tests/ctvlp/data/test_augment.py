"""Random crop / flip / intactness on tiny phantoms, expected values by construction."""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp.data import intact_anatomies, intact_in_window, random_crop, random_flip, train_augment
from ctvlp.transforms.array import anatomy_boxes


def test_crop_same_window_for_image_and_mask():
    img = np.arange(6 * 8 * 10, dtype=np.int32).reshape(6, 8, 10)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = random_crop(img, img.copy(), (3, 4, 5), rng)
        assert a.shape == (3, 4, 5) and np.array_equal(a, b)
        d, h, w = np.unravel_index(int(a[0, 0, 0]), img.shape)  # the window's corner
        assert np.array_equal(a, img[d : d + 3, h : h + 4, w : w + 5])


def test_crop_pads_short_axes():
    img = np.ones((2, 8, 8), np.uint8)
    a, m = random_crop(img, img, (4, 8, 8), np.random.default_rng(0))
    assert a.shape == (4, 8, 8) and a[2:].sum() == 0


@pytest.mark.parametrize("prob,expect_flipped", [(0.0, False), (1.0, True)])
def test_flip_probability_extremes(prob, expect_flipped):
    img = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    a, b = random_flip(img, img, prob, np.random.default_rng(0))
    assert np.array_equal(a, img[::-1, ::-1, ::-1] if expect_flipped else img)
    assert np.array_equal(a, b)


def test_intact_excludes_face_touching_and_absent():
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[2:4, 2:4, 2:4] = 1  # inside
    mask[0, 3, 3] = 2  # touches a face
    assert intact_anatomies(mask, 3).tolist() == [True, False, False]


def test_intact_from_boxes_equals_the_voxel_scan_on_random_windows():
    """Anatomies inside, outside, crossing faces, split in two parts (one inside, one beyond a
    face: its box crosses the face but no voxel lies on it), and absent."""
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 24, 28), np.uint8)
    mask[8:12, 9:14, 10:15] = 1
    mask[2:18, 3:5, 4:24] = 2  # long and thin: cut by most windows
    mask[9:11, 10:12, 2:4] = 3
    mask[9:11, 10:12, 24:26] = 3  # anatomy 3: two parts far apart along W
    boxes, _ = anatomy_boxes(mask, 5)  # anatomy 5 absent (all -1); 4 absent too
    for _ in range(400):
        size = [int(rng.integers(2, n + 1)) for n in mask.shape]
        starts = [int(rng.integers(0, n - c + 1)) for n, c in zip(mask.shape, size)]
        crop = mask[tuple(slice(s, s + c) for s, c in zip(starts, size))]
        assert intact_in_window(crop, boxes, starts).tolist() == intact_anatomies(crop, 5).tolist()


def test_train_augment_draws_as_crop_and_flip_do():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[3:6, 4:8, 5:9] = 1
    image = np.arange(mask.size, dtype=np.uint8).reshape(mask.shape)
    boxes, _ = anatomy_boxes(mask, 2)
    sample = {"image": image, "mask": mask, "boxes": boxes, "abnormal": np.zeros(2, np.int64)}
    for _ in range(20):
        out = train_augment(sample, (6, 8, 9), 0.5, rng_a)
        img, msk = random_flip(*random_crop(image, mask, (6, 8, 9), rng_b), 0.5, rng_b)
        assert np.array_equal(out["image"], img) and np.array_equal(out["mask"], msk)
        assert out["intact"].tolist() == intact_anatomies(np.ascontiguousarray(msk), 2).tolist()

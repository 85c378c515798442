"""Random crop / flip / intactness on tiny phantoms, expected values by construction."""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp.data import intact_anatomies, random_crop, random_flip


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

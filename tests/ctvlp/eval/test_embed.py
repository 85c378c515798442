"""Anatomy windows: centred on the box, size max(roi, box), only the anatomy kept, divisible padding."""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp.eval.embed import (
    crop_padded,
    divisible_pad,
    extract_window,
    present_anatomies,
    study_windows,
    window_origin,
)


def _mask(shape=(40, 48, 40)):
    """Anatomy 0 (value 1) a box [10,14) x [20,30) x [5,9); anatomy 2 (value 3) elsewhere."""
    m = np.zeros(shape, np.uint8)
    m[10:14, 20:30, 5:9] = 1
    m[20:30, 0:10, 20:40] = 3
    return m


@pytest.mark.parametrize("box, roi, start, size", [
    ((10, 14, 20, 30, 5, 9), (8, 8, 8), (8, 20, 3), (8, 10, 8)),       # roi larger on D, W: centred
    ((10, 14, 20, 30, 5, 9), (2, 16, 4), (10, 17, 5), (4, 16, 4)),     # box larger on D and W
    ((0, 3, 0, 1, 45, 48), (7, 4, 6), (-2, -2, 43), (7, 4, 6)),         # off the volume: negative start
])
def test_window_origin_centres_and_sizes(box, roi, start, size):
    got_start, got_size = window_origin(box, roi)
    assert got_start == start and got_size == size
    for i in range(3):  # the box lies inside the window and its centre is the window's (floor)
        assert got_start[i] <= box[2 * i] and box[2 * i + 1] <= got_start[i] + got_size[i]
        assert abs((box[2 * i] + box[2 * i + 1]) - (2 * got_start[i] + got_size[i])) <= 1


@pytest.mark.parametrize("box, roi", [((5, 5, 0, 1, 0, 1), (4, 4, 4)), ((-1,) * 6, (4, 4, 4)),
                                      ((0, 1, 0, 1, 0, 1), (4, 0, 4)), ((0, 1, 0, 1), (4, 4, 4))])
def test_window_origin_rejects_bad_input(box, roi):
    with pytest.raises(ValueError):
        window_origin(box, roi)


def test_crop_padded_fills_outside_voxels():
    vol = np.arange(5 * 4 * 3, dtype=np.int32).reshape(5, 4, 3)
    out = crop_padded(vol, (-2, 1, 0), (4, 2, 5), fill=-7)
    assert out.shape == (4, 2, 5)
    assert (out[:2] == -7).all() and (out[:, :, 3:] == -7).all()
    np.testing.assert_array_equal(out[2:, :, :3], vol[0:2, 1:3, :])


def test_divisible_pad_matches_monai_symmetric():
    from monai.transforms import DivisiblePad

    vol = np.random.default_rng(0).random((7, 33, 40)).astype(np.float32)
    ours = divisible_pad(vol, (16, 32, 32))
    ref = np.asarray(DivisiblePad(k=(16, 32, 32), method="symmetric")(vol[None]))[0]
    assert ours.shape == (16, 64, 64)
    np.testing.assert_array_equal(ours, ref)


def test_extract_window_keeps_only_the_anatomy_centred_and_divisible():
    mask = _mask()
    image = np.full(mask.shape, 255, np.uint8)
    img, win = extract_window(image, mask, (10, 14, 20, 30, 5, 9), 0, roi=(8, 8, 8), divisor=(16, 32, 32))
    assert img.shape == win.shape == (16, 32, 32)  # max(roi, box) = (8, 10, 8) -> padded up
    assert img.dtype == np.float32 and win.dtype == np.int64
    assert set(np.unique(win)) == {0, 1}  # anatomy 2 (value 3) is gone
    assert int((win == 1).sum()) == int((mask == 1).sum())  # the whole anatomy is inside
    # window (8, 10, 8) at start (8, 20, 3), then symmetric padding (4, 11, 12) before
    idx = np.argwhere(win == 1)
    np.testing.assert_array_equal(idx.min(0), [4 + 2, 11 + 0, 12 + 2])
    # image: 1.0 inside the cropped window, 0 in the divisible padding
    assert img[4:12, 11:21, 12:20].min() == 1.0 and img.sum() == 8 * 10 * 8


def test_extract_window_shifts_inside_the_volume_at_the_border():
    mask = _mask()
    image = np.full(mask.shape, 128, np.uint8)
    img, win = extract_window(image, mask, (20, 30, 0, 10, 20, 40), 2, roi=(16, 32, 32))
    assert img.shape == (16, 32, 32)
    # centred, H would be [-11, 21) and W [14, 46): shifted to [0, 32) and [8, 40) of the 48 x 40
    # volume, so the window is all real voxels and the anatomy is whole inside it
    assert np.allclose(img, 128 / 255)
    assert int((win == 3).sum()) == 10 * 10 * 20 and set(np.unique(win)) == {0, 3}
    assert window_origin((20, 30, 0, 10, 20, 40), (16, 32, 32), mask.shape) == ((17, 0, 8), (16, 32, 32))


def test_extract_window_pads_only_where_the_volume_is_shorter():
    mask = _mask()
    image = np.full(mask.shape, 128, np.uint8)
    img, win = extract_window(image, mask, (20, 30, 0, 10, 20, 40), 2, roi=(16, 64, 32))
    # H: 64 > 48 voxels, so the volume is centred in the window, [-8, 56), padded on both sides
    assert img.shape == (16, 64, 32)
    assert (img[:, :8] == 0).all() and (img[:, 56:] == 0).all() and np.allclose(img[:, 8:56], 128 / 255)
    assert int((win == 3).sum()) == 10 * 10 * 20


def test_study_windows_share_coinciding_windows():
    mask = _mask()
    sample = {"image": np.full(mask.shape, 7, np.uint8), "mask": mask,
              "boxes": np.array([[10, 14, 20, 30, 5, 9], [-1] * 6, [20, 30, 0, 10, 20, 40]]),
              "voxel_counts": np.array([160, 0, 2000])}
    # a window no shorter than the volume: both anatomies share it, their mask keeps both
    (shared,) = study_windows(sample, roi=(40, 56, 40), divisor=(8, 8, 8))
    assert shared[0] == [0, 2] and shared[1].shape == (40, 56, 40)
    assert set(np.unique(shared[2])) == {0, 1, 3}
    # small windows: one per anatomy, each mask holding its own anatomy only
    wins = study_windows(sample, roi=(8, 8, 8), divisor=(8, 8, 8))
    assert [w[0] for w in wins] == [[0], [2]]
    for (js, img, win), j in zip(wins, (0, 2)):
        ref_img, ref_win = extract_window(sample["image"], mask, sample["boxes"][j], j, (8, 8, 8), (8, 8, 8))
        np.testing.assert_array_equal(img, ref_img)
        np.testing.assert_array_equal(win, ref_win)


def test_extract_window_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same|both"):
        extract_window(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8), (0, 1, 0, 1, 0, 1), 0, (4, 4, 4))


def test_present_anatomies_uses_boxes_and_counts():
    sample = {"boxes": np.array([[0, 1, 0, 1, 0, 1], [-1] * 6, [2, 3, 2, 3, 2, 3]]),
              "voxel_counts": np.array([1, 0, 0])}
    assert present_anatomies(sample) == [0]

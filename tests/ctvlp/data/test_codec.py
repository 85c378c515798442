"""Volume codec round trips and shard-row decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctvlp.data import decode_sample, decode_volume, encode_volume


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_volume_round_trip(codec):
    vol = np.random.default_rng(0).integers(0, 255, (5, 7, 9), dtype=np.uint8)
    data = encode_volume(vol, codec)
    out = decode_volume(data, vol.shape, codec)
    assert out.dtype == np.uint8 and np.array_equal(out, vol) and out.flags.writeable


def test_compression_shrinks_smooth_volume():
    vol = np.zeros((16, 32, 32), np.uint8)
    vol[4:12, 8:24, 8:24] = 120
    assert len(encode_volume(vol, "zstd")) < vol.nbytes / 20


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((2, 2, 2), np.int16)])
def test_encode_rejects_wrong_input(bad):
    with pytest.raises(TypeError):
        encode_volume(bad)


def test_wrong_shape_fails():
    data = encode_volume(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError):
        decode_volume(data, (2, 2, 3), "zstd")


def test_decode_sample_types():
    img = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    row = {
        "study_id": "s", "split": "train", "shape": [2, 3, 4], "spacing": [3.0, 1.0, 1.0],
        "image": encode_volume(img), "mask": encode_volume(img % 3), "codec": "zstd",
        "boxes": [[0, 2, 0, 3, 0, 4], [-1] * 6], "voxel_counts": [8, 0], "texts": ["a", "b"],
        "abnormal": [1, 0], "input_ids": [[2, 5, 3], [2, 3]], "disease_labels": json.dumps({"X": 1}),
        "meta": "{}",
    }
    s = decode_sample(row)
    assert np.array_equal(s["image"], img) and s["boxes"].shape == (2, 6)
    assert s["abnormal"].dtype == np.int64 and [len(i) for i in s["input_ids"]] == [3, 2]
    assert s["disease_labels"] == {"X": 1}


def test_unknown_labels_are_left_out_of_the_sample():
    """An anatomy labelled -1 loses its voxels, box and count; the others are untouched."""
    import numpy as np

    from ctvlp.data.codec import drop_unknown

    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0], mask[1], mask[2] = 1, 2, 3
    sample = {"mask": mask, "abnormal": np.array([1, -1, 0]), "boxes": np.zeros((3, 6), np.int32),
              "voxel_counts": np.array([16, 16, 16])}
    out = drop_unknown(sample)
    assert out["label_known"].tolist() == [True, False, True] and out["abnormal"].tolist() == [1, 0, 0]
    assert (out["mask"] == 2).sum() == 0 and (out["mask"] == 1).sum() == 16 and (out["mask"] == 3).sum() == 16
    assert out["boxes"][1].tolist() == [-1] * 6 and out["voxel_counts"].tolist() == [16, 0, 16]

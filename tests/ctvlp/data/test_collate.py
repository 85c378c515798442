"""Collate: batch contract shapes/dtypes and dynamic text padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctvlp.data import collate


def _sample(ids, fill=255):
    return {"study_id": "s", "image": np.full((2, 3, 4), fill, np.uint8), "mask": np.ones((2, 3, 4), np.uint8),
            "abnormal": np.array([1, 0]), "input_ids": [np.array(i) for i in ids]}


def test_batch_contract_and_padding():
    batch = collate([_sample([[2, 7, 3], [2, 3]]), _sample([[2, 3], [2, 9, 9, 9, 3]], fill=0)], pad_id=0)
    assert batch["image"].shape == (2, 1, 2, 3, 4) and batch["image"].dtype == torch.float32
    assert batch["image"][0].max() == 1.0 and batch["image"][1].max() == 0.0
    assert batch["mask"].dtype == torch.int64 and batch["abnormal"].tolist() == [[1, 0], [1, 0]]
    assert batch["text_ids"].shape == (2, 2, 5)  # padded to the longest text of the batch
    assert batch["text_mask"][1, 1].tolist() == [1, 1, 1, 1, 1] and batch["text_mask"][0, 1].tolist() == [1, 1, 0, 0, 0]
    assert batch["text_ids"][0, 1].tolist() == [2, 3, 0, 0, 0]


def test_mismatched_shapes_fail():
    a, b = _sample([[2, 3], [2, 3]]), _sample([[2, 3], [2, 3]])
    b["image"] = np.zeros((2, 3, 5), np.uint8)
    with pytest.raises(ValueError, match="crop shapes"):
        collate([a, b])


def test_uint8_host_batch_becomes_the_contract_on_the_device():
    from ctvlp.loop import to_device

    rng = np.random.default_rng(0)
    samples = [dict(_sample([[2, 3], [2, 5, 3]]), image=rng.integers(0, 256, (2, 3, 4), dtype=np.uint8),
                    mask=rng.integers(0, 3, (2, 3, 4), dtype=np.uint8)) for _ in range(3)]
    host = collate(samples, volumes="uint8")
    assert host["image"].dtype == torch.uint8 and host["mask"].dtype == torch.uint8
    contract = collate(samples)
    on = to_device(host, torch.device("cpu"))
    assert on["image"].dtype == torch.float32 and on["mask"].dtype == torch.int64
    assert torch.equal(on["image"], contract["image"]) and torch.equal(on["mask"], contract["mask"])
    # the same values as torch's own conversion (the golden runs were stored with it)
    assert torch.equal(on["image"], host["image"].to(torch.float32).div_(255.0))
    assert torch.equal(on["mask"], host["mask"].to(torch.int64))
    assert torch.equal(on["text_ids"], contract["text_ids"])
    with pytest.raises(ValueError, match="volumes"):
        collate(samples, volumes="float16")


def test_host_buffers_are_reused_only_after_the_consumer_drops_every_view():
    from ctvlp.data.collate import HostBuffers

    pool = HostBuffers(per_shape=2)
    a = torch.from_numpy(pool.empty((2, 3), np.int64))
    first = a.data_ptr()
    view = a[1:]
    del a
    b = torch.from_numpy(pool.empty((2, 3), np.int64))  # a's storage is alive through the view
    assert b.data_ptr() != first
    arr = view.numpy()  # a numpy view of the tensor keeps it too
    del view
    assert pool.empty((2, 3), np.int64).ctypes.data not in (first, b.data_ptr())  # pool full: fresh
    del arr
    assert pool.empty((2, 3), np.int64).ctypes.data == first  # every view dropped: recycled
    assert pool.empty((2, 3), np.float32).dtype == np.float32  # per (shape, dtype)


def test_collate_of_recycled_batches_keeps_every_held_batch_intact():
    from ctvlp.data.collate import HOST_BUFFERS

    HOST_BUFFERS.clear()
    held = []
    for fill in range(6):  # more batches than the pool keeps per shape, all held
        samples = [dict(_sample([[2, 3], [2, 3]]), image=np.full((2, 3, 4), fill, np.uint8),
                        mask=np.full((2, 3, 4), fill, np.uint8)) for _ in range(2)]
        held.append(collate(samples))
    for fill, batch in enumerate(held):
        assert torch.equal(batch["mask"], torch.full((2, 2, 3, 4), fill, dtype=torch.int64))
        assert torch.equal(batch["image"], torch.full((2, 1, 2, 3, 4), fill / 255, dtype=torch.float32))
    ptr = held[0]["mask"].data_ptr()
    del held
    assert collate([_sample([[2, 3], [2, 3]])] * 2)["mask"].data_ptr() == ptr  # dropped: reused


def test_stacked_columns_are_used_as_they_are():
    samples = [_sample([[2, 3], [2, 3]]) for _ in range(2)]
    image = np.stack([s["image"] for s in samples])
    mask = np.stack([s["mask"] for s in samples])
    batch = collate(samples, volumes="uint8", stacked={"image": image, "mask": mask})
    assert batch["image"].data_ptr() == image.ctypes.data and batch["mask"].data_ptr() == mask.ctypes.data
    assert torch.equal(batch["image"], collate(samples, volumes="uint8")["image"])
    image.flags.writeable = False  # a read-only column (Ray's object store) is copied
    assert collate(samples, volumes="uint8", stacked={"image": image})["image"].data_ptr() != image.ctypes.data

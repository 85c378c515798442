"""jobs.data: committed shards -> Ray Data decode + crop/flip -> the batch contract."""

from __future__ import annotations

import pytest

from tests.jobs.shards import write_tiny_shards


@pytest.fixture()
def demo_spec(tmp_path):
    from ctvlp.config import load_spec

    spec = load_spec(None, ["data.preset=demo", f"data.shards_uri={tmp_path / 'shards'}"])
    write_tiny_shards(spec.data.shards_uri, num_studies=6, num_anatomies=spec.data.num_anatomies,
                      studies_per_shard=2)
    return spec


def test_shard_listing_counts_committed_train_rows(demo_spec, tmp_path):
    from jobs.data import count_rows, train_shard_uris

    uris = train_shard_uris(demo_spec)
    assert len(uris) == 3 and count_rows(demo_spec, uris) == 6
    with pytest.raises(ValueError, match="no committed 'valid' shards"):
        train_shard_uris(demo_spec, split="valid")


def test_ray_data_batches_follow_the_batch_contract(ray_session, demo_spec):
    from jobs.data import CollateColumns, build_train_dataset

    ds, rows = build_train_dataset(demo_spec)
    assert rows == 6
    batches = list(ds.iter_torch_batches(batch_size=3, collate_fn=CollateColumns(), drop_last=True))
    assert len(batches) == 2
    b = batches[0]
    d, h, w = demo_spec.data.crop_size
    assert b["image"].shape == (3, 1, d, h, w) and b["image"].dtype.is_floating_point
    assert 0.0 <= float(b["image"].min()) and float(b["image"].max()) <= 1.0
    m = demo_spec.data.num_anatomies
    assert b["mask"].shape == (3, d, h, w) and int(b["mask"].max()) <= m
    assert b["abnormal"].shape == (3, m) and b["intact"].shape == (3, m)
    assert b["text_ids"].shape[:2] == (3, m) and b["text_ids"].shape == b["text_mask"].shape
    # dynamic padding: the batch's longest text has no padding at its end
    assert int(b["text_mask"].sum(-1).max()) == b["text_ids"].shape[-1]
    assert sorted(sid for x in batches for sid in x["study_id"]) == sorted(
        f"train_{s}_{i}" for s in range(3) for i in range(2))  # each study once per epoch


@pytest.mark.parametrize("cache_mb", [0, 1024])
def test_cached_and_streamed_train_splits_give_every_study_each_epoch(ray_session, demo_spec, cache_mb):
    import os

    from jobs.data import CollateColumns, build_train_dataset, shard_bytes, train_shard_uris

    spec = demo_spec.model_copy(update={"data": demo_spec.data.model_copy(update={"cache_train_mb": cache_mb})})
    uris = train_shard_uris(spec)
    assert shard_bytes(spec, uris) == sum(os.path.getsize(u) for u in uris)
    ds, _ = build_train_dataset(spec)
    expected = sorted(f"train_{s}_{i}" for s in range(3) for i in range(2))
    crops = []
    for _ in range(2):  # two epochs: two executions of the same plan
        batches = list(ds.iter_torch_batches(batch_size=2, collate_fn=CollateColumns()))
        assert sorted(sid for b in batches for sid in b["study_id"]) == expected
        crops.append(sum(float(b["image"].sum()) for b in batches))
    assert crops[0] != crops[1]  # the random crops/flips are drawn anew every epoch

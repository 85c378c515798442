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


def test_shard_files_come_from_the_index(demo_spec, tmp_path):
    import os

    from jobs.data import shard_files, train_shard_uris

    files = shard_files(demo_spec)
    assert [f.rows for f in files] == [2, 2, 2] and train_shard_uris(demo_spec) == [f.uri for f in files]
    assert [f.bytes for f in files] == [os.path.getsize(f.uri) for f in files]
    with pytest.raises(ValueError, match="no committed 'valid' shards"):
        train_shard_uris(demo_spec, split="valid")
    os.remove(os.path.join(demo_spec.data.shards_uri, "index.json"))
    with pytest.raises(ValueError, match="run .or finish. the ingest job"):
        shard_files(demo_spec)


def test_ray_data_batches_follow_the_batch_contract(ray_session, demo_spec):
    import torch

    from ctvlp.loop import to_device
    from jobs.data import CollateColumns, build_train_dataset

    ds, rows = build_train_dataset(demo_spec)
    assert rows == 6
    host = list(ds.iter_torch_batches(batch_size=3, collate_fn=CollateColumns(), drop_last=True))
    assert len(host) == 2 and host[0]["image"].dtype == host[0]["mask"].dtype == torch.uint8  # host format
    batches = [to_device(b, torch.device("cpu")) for b in host]  # what the tasks receive
    b = batches[0]
    d, h, w = demo_spec.data.crop_size
    assert b["image"].shape == (3, 1, d, h, w) and b["image"].dtype == torch.float32
    assert b["mask"].dtype == torch.int64 and b["intact"].dtype == torch.bool
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
    from jobs.data import CollateColumns, build_train_dataset

    spec = demo_spec.model_copy(update={"data": demo_spec.data.model_copy(update={"cache_train_mb": cache_mb})})
    ds, _ = build_train_dataset(spec)
    expected = sorted(f"train_{s}_{i}" for s in range(3) for i in range(2))
    crops = []
    for _ in range(2):  # two epochs: two executions of the same plan
        batches = list(ds.iter_torch_batches(batch_size=2, collate_fn=CollateColumns()))
        assert sorted(sid for b in batches for sid in b["study_id"]) == expected
        crops.append(sum(float(b["image"].sum()) for b in batches))
    assert crops[0] != crops[1]  # the random crops/flips are drawn anew every epoch


def test_build_and_three_epochs_list_nothing_and_get_the_index_once(ray_session, demo_spec, tmp_path, monkeypatch):
    """The request pattern that scales to 272K studies: the file list comes from the index (one
    GET), epochs only open and read the shard files; no LIST, no marker, no extra footer pass."""
    from collections import Counter

    import jobs.data as data
    from ingest.requests import read_requests
    from ingest.storage import Storage

    log = str(tmp_path / "requests.log")
    monkeypatch.setattr(data, "storage_of", lambda spec: Storage(sse=None, request_log=log))
    spec = demo_spec.model_copy(update={"data": demo_spec.data.model_copy(update={"cache_train_mb": 0})})
    ds, rows = data.build_train_dataset(spec)
    expected = sorted(f"train_{s}_{i}" for s in range(3) for i in range(2))
    for _ in range(3):  # streamed: every epoch reads every file again
        assert sorted(sid for b in ds.iter_batches(batch_size=2) for sid in b["study_id"]) == expected
    requests = read_requests(log)
    kinds = Counter(kind for kind, _ in requests)
    assert rows == 6 and kinds["LIST"] == 0 and kinds["PUT"] == 0, kinds
    assert [p for k, p in requests if k == "GET" and p.endswith("index.json")] == [
        f"{spec.data.shards_uri}/index.json"]
    assert not [p for _, p in requests if "/_done/" in p]
    reads = Counter(p for k, p in requests if k == "GET" and p.endswith(".parquet"))
    assert len(reads) == 3 and all(n >= 3 for n in reads.values())  # each file, each epoch

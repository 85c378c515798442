"""Training input through Ray Data: committed ingest shards -> decode + crop/flip -> batches.

Shuffling without a global shuffle of 300K volumes: the shard *files* are read in a new random
order every epoch (``FileShuffleConfig(seed, reseed_after_execution=True)``; each epoch's
``iter_torch_batches`` is a new execution), and every worker mixes rows in a local shuffle buffer
(``data.shuffle_buffer``, ``jobs.runner``). Each study is one row, so each is seen once per
epoch. A split of at most ``data.cache_train_mb`` is read once and replayed from the object
store (no per-epoch file shuffle then; the local buffers still mix rows). Decoding and the random crop + flips (``ctvlp.data``) run in Ray Data tasks on the CPUs
of the cluster, in parallel with training; :func:`collate_columns` pads the texts per batch.
The augmentation's random draws come from fresh OS entropy in each task (reproducible crops
would need the epoch inside the map, which Ray Data does not give).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from ray.data.collate_fn import NumpyBatchCollateFn

from ctvlp.data import collate, decode_sample, train_augment
from ingest.shards import completed, data_uri
from ingest.storage import Storage, is_s3, storage_from_spec

COLLATE_FN = "jobs.data:CollateColumns"
_TRAIN_COLUMNS = ["study_id", "split", "shape", "spacing", "image", "mask", "codec", "boxes",
                  "voxel_counts", "texts", "abnormal", "input_ids", "disease_labels", "meta"]


def storage_of(spec: Any) -> Storage:
    return storage_from_spec(spec)


def train_shard_uris(spec: Any, split: str = "train") -> list[str]:
    """Committed shard files of ``split`` under ``data.shards_uri`` (sorted). Raises ValueError if none."""
    root = spec.data.shards_uri
    if not root:
        raise ValueError("data.shards_uri is unset: run the ingest job first and point the spec at its output")
    done = completed(storage_of(spec), root)
    uris = sorted(data_uri(root, shard) for shard, rec in done.items()
                  if shard.startswith(f"{split}-") and rec["written"])
    if not uris:
        raise ValueError(f"no committed {split!r} shards under {root} (looked for _done/{split}-*.json)")
    return uris


def count_rows(spec: Any, uris: list[str]) -> int:
    """Rows in the shard files, from the Parquet footers only (no data read)."""
    storage, total = storage_of(spec), 0
    for uri in uris:
        fs, path = storage.fs(uri)
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def shard_bytes(spec: Any, uris: list[str]) -> int:
    """Total size in bytes of the shard files."""
    storage = storage_of(spec)
    total = 0
    for uri in uris:
        fs, path = storage.fs(uri)
        total += int(fs.size(path))
    return total


def augment_batch(batch: dict[str, np.ndarray], crop_size: tuple[int, int, int], flip_prob: float,
                  seed: int | None = None) -> dict:
    """Ray Data ``map_batches`` function: decode each row and apply the train crop + flips
    (``seed``: the same crops in every execution, for validation; None: fresh OS entropy).

    Returns columns ``study_id``, ``image``/``mask`` uint8 ``[B, D, H, W]`` (the crop),
    ``abnormal`` int64 ``[B, M]``, ``intact`` bool ``[B, M]`` and ``input_ids`` (ragged lists).
    """
    rng = np.random.default_rng(seed)
    n = len(batch["study_id"])
    keys = ("study_id", "image", "mask", "abnormal", "intact", "input_ids", "disease_labels")
    out: dict[str, list] = {k: [] for k in keys}
    for i in range(n):
        sample = train_augment(decode_sample({k: batch[k][i] for k in batch}), crop_size, flip_prob, rng)
        for key in ("study_id", "abnormal", "intact"):
            out[key].append(sample[key])
        out["disease_labels"].append(json.dumps(sample["disease_labels"]))  # for validation AUCs
        out["image"].append(np.ascontiguousarray(sample["image"]))
        out["mask"].append(np.ascontiguousarray(sample["mask"]))
        out["input_ids"].append([ids.tolist() for ids in sample["input_ids"]])
    return {k: (v if k == "input_ids" else np.asarray(v) if k == "disease_labels" else np.stack(v))
            for k, v in out.items()}


def collate_columns(batch: dict[str, np.ndarray]) -> dict:
    """``iter_torch_batches`` collate: columnar numpy batch -> ``ctvlp.data.collate`` batch contract."""
    n = len(batch["study_id"])
    out = collate([{k: batch[k][i] for k in batch} for i in range(n)])
    if "disease_labels" in batch:  # per-study dicts, read by validation's zero-shot AUC
        out["disease_labels"] = [json.loads(x) for x in batch["disease_labels"]]
    return out


class CollateColumns(NumpyBatchCollateFn):
    """Ray Data collate (the class form Ray 2.47+ asks for): numpy columns -> batch contract."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        return collate_columns(batch)


def build_train_dataset(spec: Any) -> tuple[Any, int]:
    """``(ray.data.Dataset of augmented rows, number of studies)`` for ``spec``'s train split."""
    import ray.data
    from ray.data import FileShuffleConfig

    ray.data.DataContext.get_current().enable_progress_bars = False  # they flood job logs
    uris = train_shard_uris(spec)
    storage = storage_of(spec)
    fs, _ = storage.arrow_fs(uris[0]) if is_s3(uris[0]) else (None, None)
    paths = [storage.fs(u)[1] for u in uris] if fs is not None else uris
    cache = 0 < shard_bytes(spec, uris) <= spec.data.cache_train_mb * 2**20
    ds = ray.data.read_parquet(
        paths, filesystem=fs, columns=_TRAIN_COLUMNS,
        shuffle=None if cache else FileShuffleConfig(seed=spec.seed, reseed_after_execution=True),
    )
    if cache:
        # Every epoch is a new execution of the plan, and its file-listing task alone took ~19 s
        # per epoch on the 2-core demo machine (Ray 2.60: ReadFilesParquetV2 lists files in a
        # task), longer than the epoch's training steps. A small split is read once instead;
        # rows then reach the workers in a fixed order, mixed by their local shuffle buffers.
        ds = ds.materialize()
    ds = ds.map_batches(augment_batch, batch_size=4, batch_format="numpy",
                        fn_kwargs={"crop_size": tuple(spec.data.crop_size), "flip_prob": spec.data.flip_prob})
    return ds, count_rows(spec, uris)


def build_valid_dataset(spec: Any) -> tuple[Any, int]:
    """``(ray.data.Dataset, number of studies)`` of the valid split: the training crop size, no
    flips, crops fixed by a seed so that every validation sees the same windows."""
    import ray.data

    uris = train_shard_uris(spec, "valid")
    storage = storage_of(spec)
    fs, _ = storage.arrow_fs(uris[0]) if is_s3(uris[0]) else (None, None)
    paths = [storage.fs(u)[1] for u in uris] if fs is not None else uris
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=_TRAIN_COLUMNS).materialize()
    ds = ds.map_batches(augment_batch, batch_size=4, batch_format="numpy",
                        fn_kwargs={"crop_size": tuple(spec.data.crop_size), "flip_prob": 0.0, "seed": spec.seed})
    return ds, count_rows(spec, uris)


def shard_names(uris: list[str]) -> list[str]:
    return [posixpath.basename(u) for u in uris]

"""Training input through Ray Data: committed ingest shards -> decode + crop/flip -> batches.

Discovery: the file list (with each file's rows and bytes) comes from ``index.json``, written by
ingest at commit (:func:`shard_files`: one GET); :class:`ShardFiles` turns it into one Ray Data
read task per file, so neither building the dataset nor planning an epoch lists storage or reads
a footer or a marker (at 272K studies and thousands of files, per-epoch listing and footer reads
were the cost; ``bench/results/control_plane.md``).

Shuffling without a global shuffle of 300K volumes: the shard *files* are read in a new random
order every epoch (:class:`ShardFiles` draws a permutation each time Ray Data plans an
execution; each epoch's ``iter_torch_batches`` is one), and every worker mixes rows in a local
shuffle buffer (``data.shuffle_buffer``, ``jobs.runner``). Each study is one row, so each is
seen once per epoch. A split of at most ``data.cache_train_mb`` is read once and replayed from
the object store (no per-epoch file shuffle then; the local buffers still mix rows). Decoding
and the random crop + flips (``ctvlp.data``) run in Ray Data tasks on the CPUs of the cluster,
in parallel with training; :func:`collate_columns` pads the texts per batch. The augmentation's
random draws come from fresh OS entropy in each task (reproducible crops would need the epoch
inside the map, which Ray Data does not give).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.data.collate_fn import NumpyBatchCollateFn

from ctvlp.data import collate, decode_sample, train_augment
from ingest.shards import data_uri, index_uri, read_index
from ingest.storage import Storage, storage_from_spec

COLLATE_FN = "jobs.data:CollateColumns"
_TRAIN_COLUMNS = ["study_id", "split", "shape", "spacing", "image", "mask", "codec", "boxes",
                  "voxel_counts", "texts", "abnormal", "input_ids", "disease_labels", "meta"]


def storage_of(spec: Any) -> Storage:
    return storage_from_spec(spec)


@dataclass(frozen=True)
class ShardFile:
    """One committed shard file as the index lists it."""

    uri: str
    rows: int
    bytes: int


def shard_files(spec: Any, split: str = "train", storage: Storage | None = None) -> list[ShardFile]:
    """The committed shard files of ``split``, sorted, from ``index.json`` (one GET; no listing,
    no marker or footer read: the index is written at commit, once the counts add up).

    Raises ValueError when ``data.shards_uri`` is unset, has no index, or lists no such split.
    """
    root = spec.data.shards_uri
    if not root:
        raise ValueError("data.shards_uri is unset: run the ingest job first and point the spec at its output")
    index = read_index(storage or storage_of(spec), root)
    if "shards" not in index:
        raise ValueError(f"{index_uri(root)} has no shard table (written by an older ingest): rerun the "
                         "ingest job on the same spec; it skips every committed group and rewrites the index")
    entries = index["shards"].get(split, [])
    if not entries:
        raise ValueError(f"no committed {split!r} shards under {root} (index.json lists none)")
    return [ShardFile(data_uri(root, e["name"]), int(e["rows"]), int(e["bytes"])) for e in entries]


def train_shard_uris(spec: Any, split: str = "train") -> list[str]:
    """URIs of the committed shard files of ``split`` (:func:`shard_files`)."""
    return [f.uri for f in shard_files(spec, split)]


ROWS_PER_BLOCK = 4  # studies per block: the augment map's batch (Ray fuses it with the read)


def read_shard_file(uri: str, storage: Storage, columns: list[str]):
    """Yield the shard file's rows as ``pyarrow.Table`` blocks of ``columns``, ``ROWS_PER_BLOCK``
    rows each (zero-copy slices; streamed: one row group, ~16 studies, in memory at a time)."""
    fs, path = storage.arrow_fs(uri)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        for i in range(parquet.num_row_groups):
            group = parquet.read_row_group(i, columns=columns)
            for start in range(0, group.num_rows, ROWS_PER_BLOCK):
                yield group.slice(start, ROWS_PER_BLOCK)


class ShardFiles(Datasource):
    """Ray Data datasource over the files the index lists: one read task per file, each with its
    row and byte counts known up front, so planning an epoch touches no storage.

    With ``shuffle`` the files come in a new order at every planning of the dataset (Ray Data
    plans each execution, i.e. each epoch; the order is drawn from ``(seed, planning count)``).
    """

    def __init__(self, files: list[ShardFile], storage: Storage, columns: list[str],
                 seed: int = 0, shuffle: bool = True) -> None:
        super().__init__()
        self.files, self.storage, self.columns = list(files), storage, list(columns)
        self.seed, self.shuffle, self.plannings = seed, shuffle, 0

    def estimate_inmemory_data_size(self) -> int:
        return sum(f.bytes for f in self.files)  # volumes stay compressed in the blocks

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        order = np.arange(len(self.files))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.plannings]).permutation(order)
            self.plannings += 1
        return [ReadTask(partial(read_shard_file, f.uri, self.storage, self.columns),
                         BlockMetadata(num_rows=f.rows, size_bytes=f.bytes, input_files=[f.uri], exec_stats=None),
                         per_task_row_limit=per_task_row_limit)
                for f in (self.files[i] for i in order)]


def augment_batch(batch: dict[str, np.ndarray], crop_size: tuple[int, int, int], flip_prob: float,
                  seed: int | None = None) -> dict:
    """Ray Data ``map_batches`` function: decode each row and apply the train crop + flips
    (``seed``: the same crops in every execution, for validation; None: fresh OS entropy).

    Returns columns ``study_id``, ``image``/``mask`` uint8 ``[B, D, H, W]`` (the crop),
    ``abnormal`` int64 ``[B, M]``, ``intact`` bool ``[B, M]`` and ``input_ids`` (ragged lists).
    """
    rng = np.random.default_rng(seed)
    n = len(batch["study_id"])
    keys = ("study_id", "abnormal", "intact", "input_ids", "disease_labels")
    out: dict[str, list] = {k: [] for k in keys}
    image = np.empty((n, *crop_size), np.uint8)  # crops are written straight into the batch
    mask = np.empty((n, *crop_size), np.uint8)
    for i in range(n):
        sample = train_augment(decode_sample({k: batch[k][i] for k in batch}), crop_size, flip_prob, rng)
        for key in ("study_id", "abnormal", "intact"):
            out[key].append(sample[key])
        out["disease_labels"].append(json.dumps(sample["disease_labels"]))  # for validation AUCs
        image[i], mask[i] = sample["image"], sample["mask"]
        out["input_ids"].append([ids.tolist() for ids in sample["input_ids"]])
    cols = {k: (v if k == "input_ids" else np.asarray(v) if k == "disease_labels" else np.stack(v))
            for k, v in out.items()}
    return {**cols, "image": image, "mask": mask}


def collate_columns(batch: dict[str, np.ndarray]) -> dict:
    """``iter_torch_batches`` collate: columnar numpy batch -> the batch contract with uint8
    ``image``/``mask`` (``ctvlp.data.collate(volumes="uint8")``): ``ctvlp.loop.to_device``
    makes float32/int64 of them on the training device, not on this host's CPU."""
    n = len(batch["study_id"])
    out = collate([{k: batch[k][i] for k in batch} for i in range(n)], volumes="uint8",
                  stacked={k: batch[k] for k in ("image", "mask") if isinstance(batch.get(k), np.ndarray)})
    if "disease_labels" in batch:  # per-study dicts, read by validation's zero-shot AUC
        out["disease_labels"] = [json.loads(x) for x in batch["disease_labels"]]
    return out


class CollateColumns(NumpyBatchCollateFn):
    """Ray Data collate (the class form Ray 2.47+ asks for): numpy columns -> batch contract."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        return collate_columns(batch)


def read_shards(files: list[ShardFile], storage: Storage, columns: list[str], seed: int = 0,
                shuffle: bool = True) -> Any:
    """``ray.data.Dataset`` of the files' rows: one read task per file and no further split of its
    blocks (with fewer files than its default parallelism Ray Data would split them)."""
    import ray.data

    return ray.data.read_datasource(ShardFiles(files, storage, columns, seed=seed, shuffle=shuffle),
                                    override_num_blocks=len(files))


def build_train_dataset(spec: Any) -> tuple[Any, int]:
    """``(ray.data.Dataset of augmented rows, number of studies)`` for ``spec``'s train split."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # they flood job logs
    storage = storage_of(spec)
    files = shard_files(spec, "train", storage)
    cache = 0 < sum(f.bytes for f in files) <= spec.data.cache_train_mb * 2**20
    ds = read_shards(files, storage, _TRAIN_COLUMNS, seed=spec.seed, shuffle=not cache)
    if cache:
        # A small split is read once and replayed from the object store; rows then reach the
        # workers in a fixed order, mixed by their local shuffle buffers.
        ds = ds.materialize()
    # batch_size=None: one block (ROWS_PER_BLOCK studies) per call, which lets Ray Data fuse the
    # map into the read task (a map with a batch size is never fused with a read), so the
    # compressed rows make no round trip through the object store
    ds = ds.map_batches(augment_batch, batch_size=None, batch_format="numpy",
                        fn_kwargs={"crop_size": tuple(spec.data.crop_size), "flip_prob": spec.data.flip_prob})
    return ds, sum(f.rows for f in files)


def build_valid_dataset(spec: Any) -> tuple[Any, int]:
    """``(ray.data.Dataset, number of studies)`` of the valid split: the training crop size, no
    flips, crops fixed by a seed so that every validation sees the same windows."""
    storage = storage_of(spec)
    files = shard_files(spec, "valid", storage)
    ds = read_shards(files, storage, _TRAIN_COLUMNS, shuffle=False).materialize()
    ds = ds.map_batches(augment_batch, batch_size=None, batch_format="numpy",
                        fn_kwargs={"crop_size": tuple(spec.data.crop_size), "flip_prob": 0.0, "seed": spec.seed})
    return ds, sum(f.rows for f in files)


def shard_names(uris: list[str]) -> list[str]:
    return [posixpath.basename(u) for u in uris]

"""Shard sample codec: uint8 volumes <-> compressed bytes, and a shard row -> numpy sample.

Volumes are stored as raw C-order uint8 ``[D, H, W]`` compressed with zstd (default) or lz4 from
pyarrow's bundled C++ codecs (``pyarrow.Codec``): no extra dependency, the GIL is released while
(de)compressing, and the decompressed size is known from the ``shape`` column so decompression
writes into one exact-size buffer. Why zstd (level 1 by default) and not lz4 / gzip / WebDataset tars: see
``ingest/shards.py`` and ``bench/results/shard_format.md``.

The row layout is the shard table of docs/DESIGN.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

CODECS = ("zstd", "lz4", "none")


def _codec(name: str, level: int | None = None) -> pa.Codec:
    if name not in ("zstd", "lz4"):
        raise ValueError(f"codec must be one of {CODECS}, got {name!r}")
    return pa.Codec(name, compression_level=level) if level is not None else pa.Codec(name)


def encode_volume(volume: np.ndarray, codec: str = "zstd", level: int | None = 3) -> bytes:
    """Compress a uint8 ``[D, H, W]`` volume (image window 0..255 or grouped mask) to bytes.

    Args:
        volume: uint8 array ``[D, H, W]``; stored in C order.
        codec: ``"zstd"`` | ``"lz4"`` | ``"none"``.
        level: compression level (zstd 1..22; ignored by lz4 and none).
    """
    if volume.dtype != np.uint8 or volume.ndim != 3:
        raise TypeError(f"encode_volume expects uint8 [D, H, W], got {volume.dtype} {volume.shape}")
    raw = np.ascontiguousarray(volume).tobytes()
    if codec == "none":
        return raw
    return _codec(codec, level if codec == "zstd" else None).compress(raw, asbytes=True)


def decode_volume(data: bytes, shape: Sequence[int], codec: str) -> np.ndarray:
    """Inverse of :func:`encode_volume`: bytes -> uint8 ``[D, H, W]`` (a writable array)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 entries (D, H, W), got {shape}")
    size = int(np.prod(shape))
    if codec == "none":
        buf = bytearray(data)
    else:
        try:  # into a mutable Arrow buffer: writable as it is (a bytearray copy cost 10-20 % of the decode)
            buf = _codec(codec).decompress(data, decompressed_size=size)
        except OSError as exc:  # pyarrow reports a size mismatch as a corrupt stream
            raise ValueError(f"cannot decode a {codec} volume of shape {shape}: {exc}") from exc
        if not buf.is_mutable:  # pragma: no cover - Arrow's decompress allocates a mutable buffer
            buf = bytearray(buf)
    if len(buf) != size:
        raise ValueError(f"decoded {len(buf)} bytes, shape {shape} needs {size}")
    return np.frombuffer(buf, dtype=np.uint8).reshape(shape)


def _ragged_int(values: Any, dtype) -> list[np.ndarray]:
    return [np.asarray(v, dtype=dtype) for v in values]


def decode_sample(row: Mapping[str, Any]) -> dict[str, Any]:
    """One shard row (a dict from ``pyarrow.Table.to_pylist`` or a Ray Data row) -> numpy sample.

    Returns:
        dict with ``study_id`` str, ``split`` str, ``image`` uint8 ``[D, H, W]`` (0..255 = the HU
        window), ``mask`` uint8 ``[D, H, W]`` (grouped ids), ``spacing`` float32 ``[3]``,
        ``boxes`` int32 ``[M, 6]``, ``voxel_counts`` int64 ``[M]``, ``abnormal`` int64 ``[M]``,
        ``input_ids`` list of M int64 arrays ``[T_j]``, ``texts`` list of M str,
        ``disease_labels`` dict, ``meta`` dict, ``label_known`` bool ``[M]``.

    An anatomy whose stored label is unknown (-1: a hedged finding under
    ``ingest.report_uncertainty=unknown``, or an unreadable report under
    ``ingest.report_unreadable=unknown``) is removed from the sample here, in the one place every
    training phase and the evaluation read shards through: its mask voxels become background, its
    box -1 and its voxel count 0, so no loss, token cache or evaluation window sees it;
    ``abnormal`` becomes 0 there and ``label_known`` False.
    """
    shape = [int(s) for s in row["shape"]]
    codec = row["codec"]
    boxes = np.asarray([np.asarray(b, dtype=np.int32) for b in row["boxes"]], dtype=np.int32)
    sample = {
        "study_id": str(row["study_id"]),
        "split": str(row["split"]),
        "image": decode_volume(row["image"], shape, codec),
        "mask": decode_volume(row["mask"], shape, codec),
        "spacing": np.asarray(row["spacing"], dtype=np.float32),
        "boxes": boxes.reshape(-1, 6),
        "voxel_counts": np.asarray(row["voxel_counts"], dtype=np.int64),
        "abnormal": np.asarray(row["abnormal"], dtype=np.int64),
        "input_ids": _ragged_int(row["input_ids"], np.int64),
        "texts": [str(t) for t in row["texts"]],
        "disease_labels": json.loads(row.get("disease_labels") or "{}"),
        "meta": json.loads(row.get("meta") or "{}"),
    }
    return drop_unknown(sample)


def drop_unknown(sample: dict[str, Any]) -> dict[str, Any]:
    """Remove anatomies with label -1 from a decoded sample (see :func:`decode_sample`)."""
    abnormal = sample["abnormal"]
    sample["label_known"] = abnormal >= 0
    unknown = np.flatnonzero(abnormal < 0)
    if len(unknown) == 0:
        return sample
    drop = np.isin(sample["mask"], unknown + 1)  # grouped mask value j + 1 = anatomy j
    sample["mask"] = np.where(drop, 0, sample["mask"]).astype(np.uint8)
    sample["boxes"] = sample["boxes"].copy()
    sample["boxes"][unknown] = -1
    sample["voxel_counts"] = sample["voxel_counts"].copy()
    sample["voxel_counts"][unknown] = 0
    sample["abnormal"] = np.where(abnormal < 0, 0, abnormal)
    return sample

"""Tiny committed training shards in the ingest format (``ingest.shards.write_group`` + the index
readers take the file list from), for tests and benchmarks: blocky phantoms whose M anatomies are
boxes inside the volume."""

from __future__ import annotations

import json

import numpy as np

from ctvlp.data import encode_volume
from ingest.shards import commit_index, write_group
from ingest.storage import Storage


def phantom_row(study_id: str, split: str, shape: tuple[int, int, int], num_anatomies: int,
                rng: np.random.Generator) -> dict:
    """One ``status == "ok"`` row as ``ingest.process`` emits it (volumes zstd-compressed uint8)."""
    d, h, w = shape
    image = rng.integers(0, 40, shape, dtype=np.uint8)
    mask = np.zeros(shape, np.uint8)
    boxes, counts = [], []
    for j in range(num_anatomies):  # anatomy j: a box in slab j along W, well inside the volume
        w0 = 2 + j * max(1, (w - 4) // num_anatomies)
        box = (d // 4, 3 * d // 4, h // 4, 3 * h // 4, w0, w0 + max(1, (w - 4) // num_anatomies - 1))
        mask[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = j + 1
        image[mask == j + 1] = 100 + (150 * j) // max(1, num_anatomies - 1)
        boxes.append(list(box))
        counts.append(int((mask == j + 1).sum()))
    abnormal = rng.integers(0, 2, num_anatomies).astype(np.int8)
    return {
        "status": "ok", "study_id": study_id, "split": split, "shape": list(shape),
        "spacing": [3.0, 1.0, 1.0], "image": encode_volume(image), "mask": encode_volume(mask),
        "codec": "zstd", "boxes": boxes, "voxel_counts": counts,
        "texts": [f"anatomy {j} shows no significant abnormalities." for j in range(num_anatomies)],
        "abnormal": abnormal.tolist(),
        # ids below 200 fit every text encoder, the "tiny" one (234 WordPieces) included
        "input_ids": [[2, *rng.integers(5, 200, int(rng.integers(3, 9))).tolist(), 3]
                      for _ in range(num_anatomies)],
        "disease_labels": json.dumps({}), "meta": json.dumps({"source": "tests/jobs/shards.py"}),
    }


def write_tiny_shards(root: str, *, num_studies: int, num_anatomies: int, shape=(52, 70, 70),
                      studies_per_shard: int = 4, seed: int = 0) -> list[str]:
    """Write ``num_studies`` train studies in shards of ``studies_per_shard`` and the index;
    returns shard names."""
    rng = np.random.default_rng(seed)
    storage, names = Storage(sse=None), []
    n = -(-num_studies // studies_per_shard)
    for s in range(n):
        rows = [phantom_row(f"train_{s}_{i}", "train", shape, num_anatomies, rng)
                for i in range(min(studies_per_shard, num_studies - s * studies_per_shard))]
        name = f"train-{s:05d}-of-{n:05d}"
        write_group(rows, name, storage, root)
        names.append(name)
    commit_index(storage, root, [f"anatomy{j}" for j in range(num_anatomies)])
    return names

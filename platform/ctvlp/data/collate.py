"""Collate decoded samples into the batch contract of docs/DESIGN.md (torch tensors).

Text is padded dynamically to the longest anatomy text in the batch (not to ``max_length``):
per-anatomy texts are short ("lung shows no significant abnormalities." is ~10 tokens) and
padding to 384 would make the text encoder 10-40x more expensive.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def _stack_volumes(arrays: Sequence[np.ndarray]) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"samples have different crop shapes {sorted(shapes)}: crop them first")
    return np.stack([np.ascontiguousarray(a) for a in arrays])


def _batched(column: np.ndarray | None, samples: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    # a writable C-contiguous [B, D, H, W] column as it is; else the samples' volumes stacked
    if column is not None and column.ndim == 4 and len(column) == len(samples) \
            and column.flags.c_contiguous and column.flags.writeable:
        return column
    return _stack_volumes([s[key] for s in samples])


class HostBuffers:
    """Output arrays of the CPU conversion to the batch contract, reused once the consumer has
    dropped them (as a caching host allocator does).

    A fresh array costs more in the kernel (faulting in and zeroing its pages) than the cast
    that fills it: on a chest-crop batch the int64 mask and float32 image took ~0.07 CPU-s per
    sample fresh, ~0.007 recycled (bench/results/loader.md). An array is handed out again only
    when the pool's reference is its only one: ``torch.from_numpy`` makes the tensor's storage
    hold the array, so while any tensor or view of a batch is alive its arrays are not reused.

    Args:
        per_shape: arrays kept per (shape, dtype) (batches in flight: the one in use, prefetched ones).
        shapes: (shape, dtype) keys kept; the oldest key's arrays are dropped beyond it.
    """

    def __init__(self, per_shape: int = 4, shapes: int = 4):
        self.per_shape, self.shapes = per_shape, shapes
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        # the count of an array that only a list holds, read the way empty() reads it (what the
        # interpreter adds for the call itself differs between Python versions)
        probe = [np.empty(0)]
        self._free_refs = sys.getrefcount(probe[0])

    def empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """An uninitialised C-contiguous array (a recycled one when one is free)."""
        key = (tuple(int(n) for n in shape), np.dtype(dtype).str)
        with self._lock:
            arrays = self._arrays.setdefault(key, [])
            for i in range(len(arrays)):
                if sys.getrefcount(arrays[i]) == self._free_refs:  # only the list holds it
                    return arrays[i]
            out = np.empty(key[0], dtype)
            if len(arrays) < self.per_shape:
                arrays.append(out)
            while len(self._arrays) > self.shapes:
                del self._arrays[next(iter(self._arrays))]
            return out

    def clear(self) -> None:
        with self._lock:
            self._arrays.clear()


HOST_BUFFERS = HostBuffers()


def contract_volume(key: str, volume: torch.Tensor) -> torch.Tensor:
    """The batch contract's dtype of ``key``: ``"image"`` float32 in [0, 1] (a uint8 image is the
    stored window 0..255, divided by 255; a float one is already in [0, 1]), ``"mask"`` int64.

    On the CPU the conversion writes into :data:`HOST_BUFFERS` (arrays of earlier batches that
    the consumer has dropped: fresh 80 MB int64 masks spent most of their time in the kernel);
    the values are the same on both devices (an exact cast, and one IEEE float32 division by 255)."""
    if volume.device.type != "cpu":
        if key == "mask":
            return volume.to(torch.int64)
        return volume.to(torch.float32).div_(255.0) if volume.dtype == torch.uint8 else volume.to(torch.float32)
    array = volume.numpy()
    out = HOST_BUFFERS.empty(array.shape, np.int64 if key == "mask" else np.float32)
    np.copyto(out, array, casting="unsafe")  # as astype
    if key != "mask" and volume.dtype == torch.uint8:
        np.divide(out, np.float32(255.0), out=out)
    return torch.from_numpy(out)


def collate(samples: Sequence[dict[str, Any]], pad_id: int = 0, volumes: str = "contract",
            stacked: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Batch samples (outputs of ``decode_sample`` / ``train_augment``) for the tasks.

    Args:
        stacked: ``image``/``mask`` uint8 ``[B, D, H, W]`` already batched (Ray Data's columns),
            used as they are instead of stacking the samples' volumes (one copy fewer).
        volumes: ``"contract"``: image float32 in [0, 1] and mask int64, as the tasks consume
            them; ``"uint8"``: the loader's host format, image and mask kept uint8 (4x and 8x
            fewer bytes to copy and ship), which ``ctvlp.loop.to_device`` turns into the
            contract's dtypes on the device.

    Returns:
        ``image`` float32 ``[B, 1, D, H, W]`` in [0, 1] (uint8 / 255), ``mask`` int64
        ``[B, D, H, W]``, ``abnormal`` int64 ``[B, M]``, ``text_ids`` int64 ``[B, M, T]`` padded
        with ``pad_id`` to the batch's longest text, ``text_mask`` int64 ``[B, M, T]`` (1 = token),
        ``study_id`` list[str]; plus ``intact`` bool ``[B, M]`` when the samples carry it.
    """
    if volumes not in ("contract", "uint8"):
        raise ValueError(f"volumes must be 'contract' or 'uint8', got {volumes!r}")
    if not samples:
        raise ValueError("collate needs at least one sample")
    num_anatomies = {len(s["abnormal"]) for s in samples}
    if len(num_anatomies) != 1:
        raise ValueError(f"samples disagree on M: {sorted(num_anatomies)}")
    (m,) = num_anatomies
    stacked = stacked or {}
    image = torch.from_numpy(_batched(stacked.get("image"), samples, "image")).unsqueeze(1)
    mask = torch.from_numpy(_batched(stacked.get("mask"), samples, "mask"))
    if volumes == "contract":
        image, mask = contract_volume("image", image), contract_volume("mask", mask)
    lengths = [len(ids) for s in samples for ids in s["input_ids"]]
    t = max(max(lengths), 1)
    text_ids = torch.full((len(samples), m, t), pad_id, dtype=torch.int64)
    text_mask = torch.zeros((len(samples), m, t), dtype=torch.int64)
    for b, s in enumerate(samples):
        if len(s["input_ids"]) != m:
            raise ValueError(f"sample {s.get('study_id')!r} has {len(s['input_ids'])} texts, M={m}")
        for j, ids in enumerate(s["input_ids"]):
            text_ids[b, j, : len(ids)] = torch.as_tensor(np.asarray(ids), dtype=torch.int64)
            text_mask[b, j, : len(ids)] = 1
    batch = {
        "image": image,
        "mask": mask,
        "abnormal": torch.as_tensor(np.stack([s["abnormal"] for s in samples]), dtype=torch.int64),
        "text_ids": text_ids,
        "text_mask": text_mask,
        "study_id": [s["study_id"] for s in samples],
    }
    if all("intact" in s for s in samples):
        batch["intact"] = torch.as_tensor(np.stack([s["intact"] for s in samples]), dtype=torch.bool)
    return batch

"""Collate decoded samples into the batch contract of docs/DESIGN.md (torch tensors).

Text is padded dynamically to the longest anatomy text in the batch (not to ``max_length``):
per-anatomy texts are short ("lung shows no significant abnormalities." is ~10 tokens) and
padding to 384 would make the text encoder 10-40x more expensive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _stack_volumes(arrays: Sequence[np.ndarray]) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"samples have different crop shapes {sorted(shapes)}: crop them first")
    return np.stack([np.ascontiguousarray(a) for a in arrays])


def contract_volume(key: str, volume: torch.Tensor) -> torch.Tensor:
    """The batch contract's dtype of ``key``: ``"image"`` float32 in [0, 1] (a uint8 image is the
    stored window 0..255, divided by 255; a float one is already in [0, 1]), ``"mask"`` int64.

    On the CPU the conversion goes through numpy: its large allocations use transparent huge
    pages, so writing a fresh 80 MB int64 mask costs a few page faults instead of ~20K
    (measured 4x faster than ``Tensor.to``); the values are the same (an exact cast, and one
    IEEE float32 division by 255)."""
    if volume.device.type != "cpu":
        if key == "mask":
            return volume.to(torch.int64)
        return volume.to(torch.float32).div_(255.0) if volume.dtype == torch.uint8 else volume.to(torch.float32)
    array = volume.numpy()
    if key == "mask":
        return torch.from_numpy(array.astype(np.int64))
    out = array.astype(np.float32)
    if volume.dtype == torch.uint8:
        np.divide(out, np.float32(255.0), out=out)
    return torch.from_numpy(out)


def collate(samples: Sequence[dict[str, Any]], pad_id: int = 0, volumes: str = "contract") -> dict[str, Any]:
    """Batch samples (outputs of ``decode_sample`` / ``train_augment``) for the tasks.

    Args:
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
    image = torch.from_numpy(_stack_volumes([s["image"] for s in samples])).unsqueeze(1)
    mask = torch.from_numpy(_stack_volumes([s["mask"] for s in samples]))
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

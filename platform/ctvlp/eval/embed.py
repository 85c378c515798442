"""Anatomy windows and their embeddings: the image side of zero-shot diagnosis and the linear probe.

Per study and per anatomy j present in the scan (released ViSD-Boost ``eval.py:278-334``):

1. a window centred on j's bounding box, of size ``max(roi, box extent)`` per axis, where the
   parts outside the volume are padded (image 0 = the HU window's low end, mask 0);
2. the window's mask keeps only anatomy j (every other anatomy becomes background);
3. symmetric zero padding to a multiple of the encoder's deepest stride (16, 32, 32), as MONAI's
   ``DivisiblePad(method="symmetric")`` does (parity tested);
4. one forward pass; the pooled embedding of anatomy j is the window's embedding.

Deviation from the release: MONAI's ``SpatialCrop`` there *clips* the window at the border, so a
window near the edge is smaller and the anatomy sits off-centre after the divisible padding. We
pad instead, so every window of an anatomy whose box fits in ``roi`` has the same shape (windows
of the same shape are batched) and the anatomy stays centred; the padded voxels are background
that the window's mask already excludes from pooling.

Phase-4 exports (vision + text + vqvae + perception) embed through
:func:`ctvlp.models.boost.boosted_forward`; the level-4 token activations of the anatomy before
and after the perception MLP are sampled for the paper's Fig. 5 histogram, and the VQ-VAE code
usage for the codebook picture.

Shape legend: S studies, M anatomies, E embed dim, B windows in a forward pass, L4 level-4 tokens,
C token dim, K samples of activations per window, Q code count per anatomy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctvlp.config import spec_from_dict
from ctvlp.export import load_part, read_config
from ctvlp.models.boost import boosted_forward
from ctvlp.models.perception import AbnormalityPerception
from ctvlp.models.resnet3d import STAGE_STRIDES
from ctvlp.models.text import build_text_encoder, build_tokenizer
from ctvlp.models.visd import build_vision_model
from ctvlp.models.vqvae import build_vqvae

DIVISOR: tuple[int, int, int] = STAGE_STRIDES[-1]  # (16, 32, 32): the level-4 token stride
Vec3 = tuple[int, int, int]


# ------------------------------------------------------------------------------------ windows
def window_origin(box: Sequence[int], roi: Sequence[int]) -> tuple[Vec3, Vec3]:
    """(start, size) per axis of the window centred on ``box``.

    Args:
        box: (d0, d1, h0, h1, w0, w1), half-open voxel bounds of the anatomy.
        roi: (D, H, W) minimum window size (``spec.data.eval_window``).
    Returns:
        start (may be negative or run past the volume: the caller pads), size = max(roi, extent).
    """
    b = [int(v) for v in box]
    if len(b) != 6 or any(b[2 * i + 1] <= b[2 * i] for i in range(3)) or min(b) < 0:
        raise ValueError(f"box must be 6 non-negative half-open bounds (d0,d1,h0,h1,w0,w1), got {b}")
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi must be 3 positive sizes (D, H, W), got {tuple(roi)}")
    size = tuple(max(int(r), b[2 * i + 1] - b[2 * i]) for i, r in enumerate(roi))
    # centre of [lo, hi) is (lo + hi) / 2; floor keeps the box inside the window for odd slack
    start = tuple((b[2 * i] + b[2 * i + 1] - size[i]) // 2 for i in range(3))
    return start, size  # type: ignore[return-value]


def crop_padded(volume: np.ndarray, start: Sequence[int], size: Sequence[int], fill=0) -> np.ndarray:
    """``volume[start : start + size]`` per axis, with out-of-volume voxels set to ``fill``.

    Hand-written: MONAI's SpatialCrop clips at the border instead (see the module docstring).
    """
    out = np.full(tuple(size), fill, dtype=volume.dtype)
    src, dst = [], []
    for s, n, full in zip(start, size, volume.shape):
        lo, hi = max(s, 0), min(s + n, full)
        if hi <= lo:
            return out  # the window misses the volume on this axis
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def divisible_pad(volume: np.ndarray, divisor: Sequence[int] = DIVISOR, fill=0) -> np.ndarray:
    """Zero-pad [D, H, W] up to multiples of ``divisor``, split as MONAI's
    ``DivisiblePad(k, method="symmetric")`` (before = total // 2). Plain ``np.pad``: MONAI would
    wrap every window in a MetaTensor for a one-line padding."""
    total = [(-n) % k for n, k in zip(volume.shape, divisor)]
    return np.pad(volume, [(t // 2, t - t // 2) for t in total], constant_values=fill)


def extract_window(image: np.ndarray, mask: np.ndarray, box: Sequence[int], anatomy: int,
                   roi: Sequence[int], divisor: Sequence[int] = DIVISOR) -> tuple[np.ndarray, np.ndarray]:
    """One anatomy's evaluation window.

    Args:
        image: [D, H, W] uint8 (0..255 = the HU window) or float in [0, 1].
        mask: [D, H, W] grouped ids (anatomy j = value j + 1).
        box: the anatomy's (d0, d1, h0, h1, w0, w1); anatomy: j (0-based); roi: (D, H, W).
    Returns:
        image float32 [D', H', W'] in [0, 1] and mask int64 [D', H', W'] holding only j + 1,
        with D', H', W' = max(roi, extent) rounded up to multiples of ``divisor``.
    """
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"image and mask must both be [D, H, W], got {image.shape} and {mask.shape}")
    start, size = window_origin(box, roi)
    img = crop_padded(image, start, size)
    img = img.astype(np.float32) / 255.0 if image.dtype == np.uint8 else img.astype(np.float32)
    win_mask = crop_padded(mask, start, size)
    only = np.where(win_mask == anatomy + 1, anatomy + 1, 0).astype(np.int64)
    return divisible_pad(img, divisor), divisible_pad(only, divisor)


def present_anatomies(sample: dict[str, Any]) -> list[int]:
    """Anatomy indices j with a box and voxels in a decoded sample (``ctvlp.data.decode_sample``)."""
    boxes, counts = np.asarray(sample["boxes"]), np.asarray(sample["voxel_counts"])
    return [j for j in range(len(boxes)) if boxes[j][0] >= 0 and counts[j] > 0]


# -------------------------------------------------------------------------------------- model
class EvalModel:
    """A frozen exported model in eval mode: vision (+ text) (+ vqvae + perception).

    Phase 1 exports (vision only) serve the linear probe; phase 2 (vision + text) and phase 4
    (+ vqvae + perception: boosted embeddings) serve zero-shot diagnosis too.
    """

    def __init__(self, spec: Any, parts: dict[str, torch.nn.Module], phase: int, device: str = "cpu"):
        if "vision" not in parts:
            raise ValueError(f"an evaluation model needs a 'vision' part, got {sorted(parts)}")
        self.spec, self.phase, self.device = spec, phase, torch.device(device)
        self.anatomies = list(spec.data.anatomies)
        self.parts = {k: m.to(self.device).eval().requires_grad_(False) for k, m in parts.items()}
        self.boosted = "vqvae" in parts and "perception" in parts
        self.tokenizer = build_tokenizer(spec.model.text.name_or_path) if "text" in parts else None

    @classmethod
    def from_export(cls, export_dir: str | Path, device: str = "cpu") -> EvalModel:
        """Rebuild the model parts of a local export directory from its embedded spec."""
        config = read_config(export_dir)
        spec = spec_from_dict(config["spec"])
        m, mspec = spec.data.num_anatomies, spec.model
        builders = {
            "vision": lambda: build_vision_model(mspec, m),
            "text": lambda: build_text_encoder(mspec, m),
            "vqvae": lambda: build_vqvae(mspec, m),
            "perception": lambda: AbnormalityPerception(m, mspec.token_dim, mspec.perception_activation),
        }
        parts = {}
        for name in config.get("parts", []):
            if name not in builders:
                raise ValueError(f"export {export_dir} has part {name!r}; evaluation knows {sorted(builders)}")
            parts[name] = builders[name]()
            load_part(parts[name], name, export_dir)
        return cls(spec, parts, int(config.get("phase", 0)), device)

    @property
    def has_text(self) -> bool:
        return "text" in self.parts

    @torch.no_grad()
    def forward_windows(self, image: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor) -> dict:
        """Embed B windows, each for its own anatomy.

        Args: image [B, 1, D, H, W] float; mask [B, D, H, W] int64; anatomy [B] int64 (j per window).
        Returns: {"embeds": [B, E] unit norm, "valid": [B] bool} and, when boosted, "orig4" and
            "boosted4" [B, L4, C] (the anatomy's level-4 tokens before / after perception),
            "flags4" [B, L4] bool.
        """
        image, mask = image.to(self.device), mask.to(self.device)
        rows = torch.arange(image.shape[0], device=self.device)
        anatomy = anatomy.to(self.device)
        if not self.boosted:
            out = self.parts["vision"](image, mask)
            return {"embeds": out["embeds"][rows, anatomy], "valid": out["valid"][rows, anatomy]}
        out = boosted_forward(self.parts["vision"], self.parts["vqvae"], self.parts["perception"], image, mask)
        return {"embeds": out["embeds"][rows, anatomy], "valid": out["valid"][rows, anatomy],
                "orig4": out["orig4"], "boosted4": out["boosted4"][rows, anatomy],
                "flags4": out["flags4"][rows, anatomy]}

    @torch.no_grad()
    def code_indices(self, tokens: torch.Tensor, flags: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        """VQ-VAE code of each level-4 token: tokens [B, L4, C], flags [B, L4], anatomy [B] -> [B, L4]."""
        return self.parts["vqvae"].encode_indices(tokens, flags, anatomy.to(tokens.device))

    @property
    def num_codes(self) -> int:
        """Q: code indices per anatomy (K, or M*K with a global codebook search)."""
        cfg = self.parts["vqvae"].cfg
        return cfg.codebook_size * (cfg.num_anatomies if cfg.search == "global" else 1)


# ------------------------------------------------------------------------ batched embeddings
@dataclass
class StudyEmbeddings:
    """What the image side produces for S studies.

    Attributes:
        study_ids: S ids. embeds: [S, M, E] float32, NaN rows for absent anatomies.
        present: [S, M] bool. abnormal: [S, M] report-parser labels (0/1) from the shard.
        act_orig, act_boost: [S, M, K] float32 sampled level-4 activations (NaN when absent or
            the model is not boosted). code_counts: [S, M, Q] int64 code usage (Q = 0 if not boosted).
    """

    study_ids: list[str]
    embeds: np.ndarray
    present: np.ndarray
    abnormal: np.ndarray
    act_orig: np.ndarray
    act_boost: np.ndarray
    code_counts: np.ndarray


def _sample_values(tokens: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k values drawn without replacement from a [L, C] token set (all, NaN-padded, if fewer)."""
    flat = tokens.reshape(-1)
    out = np.full(k, np.nan, np.float32)
    take = rng.choice(flat.size, size=min(k, flat.size), replace=False)
    out[: take.size] = flat[take]
    return out


def embed_studies(model: EvalModel, samples: Sequence[dict], roi: Sequence[int], batch_size: int = 8,
                  activation_samples: int = 64, seed: int = 0) -> StudyEmbeddings:
    """Embed every present anatomy of each decoded sample, batching windows of the same shape.

    Args:
        samples: ``ctvlp.data.decode_sample`` dicts (image, mask, boxes, voxel_counts, abnormal).
        roi: (D, H, W) window minimum; batch_size: windows per forward pass.
        activation_samples: K activation values kept per window (boosted models).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    s, m = len(samples), len(model.anatomies)
    groups: dict[tuple, list] = defaultdict(list)  # window shape -> [(study, j, image, mask)]
    present = np.zeros((s, m), bool)
    for i, sample in enumerate(samples):
        if len(sample["boxes"]) != m:
            raise ValueError(f"study {sample['study_id']}: {len(sample['boxes'])} boxes, model has M={m}")
        for j in present_anatomies(sample):
            img, msk = extract_window(sample["image"], sample["mask"], sample["boxes"][j], j, roi)
            groups[img.shape].append((i, j, img, msk))
            present[i, j] = True
    q = model.num_codes if model.boosted else 0
    e = int(model.spec.model.embed_dim)
    out = StudyEmbeddings([str(x["study_id"]) for x in samples], np.full((s, m, e), np.nan, np.float32),
                          present, np.stack([np.asarray(x["abnormal"]) for x in samples]) if s else np.zeros((0, m)),
                          np.full((s, m, activation_samples), np.nan, np.float32),
                          np.full((s, m, activation_samples), np.nan, np.float32), np.zeros((s, m, q), np.int64))
    rng = np.random.default_rng(seed)
    for windows in groups.values():
        for b0 in range(0, len(windows), batch_size):
            _embed_batch(model, windows[b0 : b0 + batch_size], out, rng)
    return out


def _embed_batch(model: EvalModel, chunk: list, out: StudyEmbeddings, rng: np.random.Generator) -> None:
    """One forward pass over same-shape windows; writes into ``out`` in place."""
    image = torch.from_numpy(np.stack([c[2] for c in chunk]))[:, None]  # [B, 1, D, H, W]
    mask = torch.from_numpy(np.stack([c[3] for c in chunk]))  # [B, D, H, W]
    anatomy = torch.tensor([c[1] for c in chunk], dtype=torch.long)
    res = model.forward_windows(image, mask, anatomy)
    emb = res["embeds"].float().cpu().numpy()
    if model.boosted:
        codes = model.code_indices(res["orig4"], res["flags4"], anatomy).cpu().numpy()
        flags = res["flags4"].cpu().numpy()
        orig, boost = res["orig4"].float().cpu().numpy(), res["boosted4"].float().cpu().numpy()
    for b, (i, j, _, _) in enumerate(chunk):
        if not bool(res["valid"][b]):
            raise RuntimeError(f"study {out.study_ids[i]}: anatomy {j} has no token in its own window")
        out.embeds[i, j] = emb[b]
        if model.boosted:
            f = flags[b]
            k = out.act_orig.shape[-1]
            out.act_orig[i, j] = _sample_values(orig[b][f], k, rng)
            out.act_boost[i, j] = _sample_values(boost[b][f], k, rng)
            out.code_counts[i, j] = np.bincount(codes[b][f], minlength=out.code_counts.shape[-1])

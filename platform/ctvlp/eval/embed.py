"""Anatomy windows and their embeddings: the image side of zero-shot diagnosis and the linear probe.

Per study and per anatomy j present in the scan (released ViSD-Boost ``eval.py:278-334``):

1. a window centred on j's bounding box, of size ``max(roi, box extent)`` per axis, then shifted
   back inside the volume along every axis where the volume is at least that long (the anatomy
   stays whole inside it); along an axis where the volume is shorter, the window is centred on
   the volume and padded (image 0 = the HU window's low end, mask 0);
2. the window's mask keeps only anatomy j (every other anatomy becomes background);
3. symmetric zero padding to a multiple of the encoder's deepest stride (16, 32, 32), as MONAI's
   ``DivisiblePad(method="symmetric")`` does (parity tested);
4. one forward pass; the pooled embedding of anatomy j is the window's embedding.

Deviation from the release: MONAI's ``SpatialCrop`` there *clips* the window at the border, so a
window near the edge is smaller and the anatomy sits off-centre after the divisible padding. We
shift the window inside instead, so every window of an anatomy whose box fits in ``roi`` has the
same shape (windows of the same shape are batched) and holds real context rather than padding,
as the training crops do (they are random crops of the stored volume, never padded around an
anatomy). Along axes where the volume is no longer than the window (the ``demo`` preset stores
the whole scan in about one window) every anatomy gets the same placement, and
:func:`study_windows` encodes a window shared by several anatomies once for all of them.

A CLIP export (``model.alignment: global``) embeds each window as a whole volume and gives that
embedding to every anatomy the window holds.

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
from ctvlp.models.tokens import anatomy_presence
from ctvlp.models.visd import build_vision_model, volume_embedding
from ctvlp.models.vqvae import build_vqvae
from ctvlp.precision import bf16_autocast

DIVISOR: tuple[int, int, int] = STAGE_STRIDES[-1]  # (16, 32, 32): the level-4 token stride
Vec3 = tuple[int, int, int]


# ------------------------------------------------------------------------------------ windows
def window_origin(box: Sequence[int], roi: Sequence[int],
                  shape: Sequence[int] | None = None) -> tuple[Vec3, Vec3]:
    """(start, size) per axis of the window centred on ``box``, shifted inside ``shape``.

    Args:
        box: (d0, d1, h0, h1, w0, w1), half-open voxel bounds of the anatomy.
        roi: (D, H, W) minimum window size (``spec.data.eval_window``).
        shape: the volume's (D, H, W); along an axis at least ``size`` long the window is moved
            to lie inside it (the box stays inside the window); along a shorter axis the volume
            is centred in the window. None: centred on the box only.
    Returns:
        start (negative or past the volume only along axes shorter than the window: the caller
        pads), size = max(roi, extent).
    """
    b = [int(v) for v in box]
    if len(b) != 6 or any(b[2 * i + 1] <= b[2 * i] for i in range(3)) or min(b) < 0:
        raise ValueError(f"box must be 6 non-negative half-open bounds (d0,d1,h0,h1,w0,w1), got {b}")
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi must be 3 positive sizes (D, H, W), got {tuple(roi)}")
    size = tuple(max(int(r), b[2 * i + 1] - b[2 * i]) for i, r in enumerate(roi))
    # centre of [lo, hi) is (lo + hi) / 2; floor keeps the box inside the window for odd slack
    start = [(b[2 * i] + b[2 * i + 1] - size[i]) // 2 for i in range(3)]
    if shape is not None:
        for i in range(3):
            n = int(shape[i])
            # inside a longer volume; around a shorter one (it, hence the box, centred in the window)
            start[i] = min(max(start[i], 0), n - size[i]) if size[i] <= n else (n - size[i]) // 2
    return tuple(start), size  # type: ignore[return-value]


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
    _check_pair(image, mask)
    return _crop_window(image, mask, *window_origin(box, roi, image.shape), [anatomy], divisor)


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"image and mask must both be [D, H, W], got {image.shape} and {mask.shape}")


def _crop_window(image: np.ndarray, mask: np.ndarray, start: Sequence[int], size: Sequence[int],
                 anatomies: Sequence[int], divisor: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop (padding outside the volume), image to float32 [0, 1], mask keeping only ``anatomies``
    (values j + 1), both padded to multiples of ``divisor``."""
    img = crop_padded(image, start, size)
    img = img.astype(np.float32) / 255.0 if image.dtype == np.uint8 else img.astype(np.float32)
    win = crop_padded(mask, start, size).astype(np.int64)
    win[~np.isin(win, np.asarray(anatomies) + 1)] = 0
    return divisible_pad(img, divisor), divisible_pad(win, divisor)


def study_windows(sample: dict[str, Any], roi: Sequence[int],
                  divisor: Sequence[int] = DIVISOR) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """Every present anatomy's :func:`extract_window` window of one decoded sample, one entry per
    distinct window.

    Anatomies whose windows coincide (same origin and size: all of them when the volume is
    nowhere longer than the window) share one image crop, hence one encoder pass; the shared
    mask holds each of them (value j + 1) and nothing else. Pooling, intactness and the boosted forward are
    per anatomy, so anatomy j's outputs equal those of its own single-anatomy window (tested).

    Returns:
        ``[(anatomies [j, ...], image float32 [D', H', W'], mask int64 [D', H', W']), ...]``.
    """
    image, mask = sample["image"], sample["mask"]
    _check_pair(image, mask)
    groups: dict[tuple, list[int]] = defaultdict(list)  # (start, size) -> anatomies
    for j in present_anatomies(sample):
        groups[window_origin(sample["boxes"][j], roi, image.shape)].append(j)
    return [(js, *_crop_window(image, mask, start, size, js, divisor)) for (start, size), js in groups.items()]


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

    def __init__(self, spec: Any, parts: dict[str, torch.nn.Module], phase: int, device: str = "cpu",
                 bf16: bool = False):
        if "vision" not in parts:
            raise ValueError(f"an evaluation model needs a 'vision' part, got {sorted(parts)}")
        self.spec, self.phase, self.device = spec, phase, torch.device(device)
        self.bf16 = bool(bf16)  # forward passes under bf16 autocast (float32 weights; ctvlp.precision)
        self.anatomies = list(spec.data.anatomies)
        self.parts = {k: m.to(self.device).eval().requires_grad_(False) for k, m in parts.items()}
        self.boosted = "vqvae" in parts and "perception" in parts
        # CLIP (model.alignment=global): one whole-volume embedding serves every anatomy of a window
        self.whole_volume = spec.model.alignment == "global"
        self.tokenizer = build_tokenizer(spec.model.text.name_or_path) if "text" in parts else None
        self.method: str | None = None  # set for another method's export (_from_method_export)
        # the finding names of an existence classifier (MeDSLIP; ASG with methods.asg.zero_shot
        # "tags"): forward_windows then returns "scores" [B, F] in this order, and zero-shot reads
        # them (ctvlp.eval.zeroshot.ExistenceBank)
        self.finding_names: list[str] | None = None
        # another method's window forward (its task's ``window_outputs`` over these parts)
        self.window_outputs: Any = None

    @classmethod
    def from_export(cls, export_dir: str | Path, device: str = "cpu", bf16: bool = False) -> EvalModel:
        """Rebuild the model parts of a local export directory from its embedded spec."""
        config = read_config(export_dir)
        spec = spec_from_dict(config["spec"])
        if config.get("method"):  # another method's export (ASG, MeDSLIP): its task builds the parts
            return cls._from_method_export(export_dir, config, spec, device, bf16)
        m, mspec = spec.data.num_anatomies, spec.model
        pooled = 1 if mspec.alignment == "global" else m  # CLIP pools the whole volume, one text query
        builders = {
            "vision": lambda: build_vision_model(mspec, pooled, hu_window=spec.data.hu_window),
            "text": lambda: build_text_encoder(mspec, pooled),
            "vqvae": lambda: build_vqvae(mspec, m),
            "perception": lambda: AbnormalityPerception(m, mspec.token_dim, mspec.perception_activation),
        }
        parts = {}
        for name in config.get("parts", []):
            if name not in builders:
                raise ValueError(f"export {export_dir} has part {name!r}; evaluation knows {sorted(builders)}")
            parts[name] = builders[name]()
            load_part(parts[name], name, export_dir)
        return cls(spec, parts, int(config.get("phase", 0)), device, bf16)

    @classmethod
    def _from_method_export(cls, export_dir: str | Path, config: dict, spec: Any, device: str,
                            bf16: bool) -> EvalModel:
        """Parts of a method's export rebuilt by its task (``ctvlp.tasks.method_parts``), loaded
        strictly; the task class says how its windows are read and whether it scores by existence."""
        from functools import partial

        from ctvlp.tasks import METHODS, method_parts

        built = method_parts(spec, config["method"])
        parts = {}
        for name in config.get("parts", []):
            if name not in built:
                raise ValueError(f"export {export_dir} has part {name!r}; method {config['method']!r} has {sorted(built)}")
            parts[name] = built[name]
            load_part(parts[name], name, export_dir)
        model = cls(spec, parts, int(config.get("phase", 0)), device, bf16)
        task = METHODS[config["method"]]
        model.method, model.window_outputs = config["method"], partial(task.window_outputs, model.parts)
        model.finding_names = config.get("findings") if task.scores_by_existence(spec) else None
        return model

    def autocast(self):
        """The forward's precision region: bf16 autocast when ``self.bf16``, else a no-op."""
        return bf16_autocast(self.device, self.bf16)

    @property
    def has_text(self) -> bool:
        return "text" in self.parts

    @torch.no_grad()
    def forward_windows(self, image: torch.Tensor, mask: torch.Tensor) -> dict:
        """Embed B windows, every anatomy of each (callers read the anatomies their window holds).

        Args: image [B, 1, D, H, W] float; mask [B, D, H, W] int64 (anatomy j = j + 1).
        Returns: {"embeds": [B, M, E] unit norm, "valid": [B, M] bool}; "scores" [B, F] for an
            existence classifier (``finding_names``); when boosted, "orig4" [B, L4, C] (level-4
            tokens), "boosted4" [B, M, L4, C] (after perception, per anatomy) and "flags4" [B, M, L4] bool.
        """
        image, mask = image.to(self.device), mask.to(self.device)
        with self.autocast():
            if self.whole_volume:
                emb = volume_embedding(self.parts["vision"], image).float()  # [B, E]
                present = anatomy_presence(mask, len(self.anatomies))  # [B, M]
                return {"embeds": emb[:, None, :] * present[..., None], "valid": present}
            if not self.boosted:
                out = (self.window_outputs or self.parts["vision"])(image, mask)
                res = {"embeds": out["embeds"].float(), "valid": out["valid"]}
                if "scores" in out:  # an existence classifier's P(present) per finding [B, F]
                    res["scores"] = out["scores"].float()
                return res
            out = boosted_forward(self.parts["vision"], self.parts["vqvae"], self.parts["perception"], image, mask)
        out["embeds"] = out["embeds"].float()
        return {k: out[k] for k in ("embeds", "valid", "orig4", "boosted4", "flags4")}

    @torch.no_grad()
    def code_indices(self, tokens: torch.Tensor, flags: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        """VQ-VAE code of each level-4 token: tokens [B, L4, C], flags [B, L4], anatomy [B] -> [B, L4]."""
        with self.autocast():
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
        finding_scores: [S, M, F] float32, an existence classifier's P(finding f present) on
            anatomy j's window (NaN where absent; F = 0 without a classifier).
    """

    study_ids: list[str]
    embeds: np.ndarray
    present: np.ndarray
    abnormal: np.ndarray
    act_orig: np.ndarray
    act_boost: np.ndarray
    code_counts: np.ndarray
    finding_scores: np.ndarray | None = None


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
    groups: dict[tuple, list] = defaultdict(list)  # window shape -> [(study, [j, ...], image, mask)]
    present = np.zeros((s, m), bool)
    for i, sample in enumerate(samples):
        if len(sample["boxes"]) != m:
            raise ValueError(f"study {sample['study_id']}: {len(sample['boxes'])} boxes, model has M={m}")
        for js, img, msk in study_windows(sample, roi):
            groups[img.shape].append((i, js, img, msk))
            present[i, js] = True
    q = model.num_codes if model.boosted else 0
    e = int(model.spec.model.embed_dim)
    out = StudyEmbeddings([str(x["study_id"]) for x in samples], np.full((s, m, e), np.nan, np.float32),
                          present, np.stack([np.asarray(x["abnormal"]) for x in samples]) if s else np.zeros((0, m)),
                          np.full((s, m, activation_samples), np.nan, np.float32),
                          np.full((s, m, activation_samples), np.nan, np.float32), np.zeros((s, m, q), np.int64),
                          np.full((s, m, len(model.finding_names or [])), np.nan, np.float32))
    rng = np.random.default_rng(seed)
    for windows in groups.values():
        for b0 in range(0, len(windows), batch_size):
            _embed_batch(model, windows[b0 : b0 + batch_size], out, rng)
    return out


def _embed_batch(model: EvalModel, chunk: list, out: StudyEmbeddings, rng: np.random.Generator) -> None:
    """One forward pass over same-shape windows; writes each window's anatomies into ``out``."""
    image = torch.from_numpy(np.stack([c[2] for c in chunk]))[:, None]  # [B, 1, D, H, W]
    mask = torch.from_numpy(np.stack([c[3] for c in chunk]))  # [B, D, H, W]
    res = model.forward_windows(image, mask)
    rows = [(b, i, j) for b, (i, js, _, _) in enumerate(chunk) for j in js]  # one per (window, anatomy): R
    dev = res["embeds"].device
    b_idx = torch.tensor([r[0] for r in rows], dtype=torch.long, device=dev)
    j_idx = torch.tensor([r[2] for r in rows], dtype=torch.long, device=dev)
    valid = res["valid"][b_idx, j_idx].cpu().numpy()
    emb = res["embeds"][b_idx, j_idx].float().cpu().numpy()  # [R, E]
    scores = res["scores"].cpu().numpy() if "scores" in res else None  # [B, F] per window
    if model.boosted:
        orig4, flags4 = res["orig4"][b_idx], res["flags4"][b_idx, j_idx]  # [R, L4, C], [R, L4]
        codes = model.code_indices(orig4, flags4, j_idx).cpu().numpy()
        flags, orig = flags4.cpu().numpy(), orig4.float().cpu().numpy()
        boost = res["boosted4"][b_idx, j_idx].float().cpu().numpy()  # [R, L4, C]
    for r, (b, i, j) in enumerate(rows):
        if not bool(valid[r]):
            raise RuntimeError(f"study {out.study_ids[i]}: anatomy {j} has no token in its own window")
        out.embeds[i, j] = emb[r]
        if scores is not None:
            out.finding_scores[i, j] = scores[b]
        if model.boosted:
            f = flags[r]
            k = out.act_orig.shape[-1]
            out.act_orig[i, j] = _sample_values(orig[r][f], k, rng)
            out.act_boost[i, j] = _sample_values(boost[r][f], k, rng)
            out.code_counts[i, j] = np.bincount(codes[r][f], minlength=out.code_counts.shape[-1])

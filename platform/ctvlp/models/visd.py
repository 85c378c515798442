"""The ViSD-Boost vision side: encoder -> anatomy token flags -> (token transform) -> query pooling.

``VisionModel.forward(image, mask, token_transform=None)`` returns a dict

| key      | shape                 | meaning                                                   |
|----------|-----------------------|-----------------------------------------------------------|
| tokens   | list of [B, L_s, C]   | level tokens (after ``token_transform`` when given)       |
| flags    | list of [B, M, L_s]   | bool token membership per anatomy (``tokens.py``)         |
| grids    | list of (d, h, w)     | token grid of each level                                  |
| embeds   | [B, M, E]             | unit-norm anatomy embeddings (zero where not ``valid``)   |
| valid    | [B, M] bool           | anatomy has >= 1 token in the crop                        |
| intact   | [B, M] bool           | present and touching no face of the crop (the loss mask)  |

``token_transform(tokens, flags) -> tokens`` replaces the level tokens before pooling; phase 4
passes the abnormality-perception MLP there (sec. 3.3.2), which rewrites the level-4 tokens from
concat(original, VQ-VAE reconstruction). It must return a list of the same shapes.

``input_windows`` (optional) turns the one stored intensity channel into several windowed
channels before the encoder (``WindowChannels``), e.g. the full window plus a soft-tissue one.

Shape legend: B batch, M anatomies, L tokens, C token dim, E embed dim.

Precision (docs/DESIGN.md): float32 weights; the encoder and pooling compute in bf16 under the
loop's autocast; ``embeds`` may be bf16 there, and every loss casts to float32 on entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ctvlp.models.pooling import AnatomyQueryPooling
from ctvlp.models.resnet3d import STAGE_STRIDES, MultiScaleTokenEncoder
from ctvlp.models.tokens import anatomy_token_flags, intact_anatomies

TokenTransform = Callable[[list[torch.Tensor], list[torch.Tensor]], list[torch.Tensor]]


class WindowChannels(nn.Module):
    """``[B, 1, D, H, W]`` stored intensities in [0, 1] -> ``[B, K, D, H, W]``, one channel per window.

    Channel k is ``clamp((x - lo_k) / (hi_k - lo_k), 0, 1)`` with ``(lo_k, hi_k)`` in stored units
    (the fraction of the stored HU window, ``build_vision_model`` converts from HU). Radiologists
    read CT in several windows because one linear map cannot show both a 900 HU lung/nodule contrast
    and a 50 HU liver/cyst contrast; a fixed clip gives the encoder the narrow window's contrast at
    its input instead of leaving a ReLU stack to learn it. MONAI's ScaleIntensityRange(clip=True)
    maps one range per call as a data transform; doing the K ranges here, as one broadcast inside
    the model, keeps training, the token cache, evaluation and exports on the same input by
    construction (the shards stay one uint8 channel). Parameter-free.
    """

    def __init__(self, windows: Sequence[tuple[float, float]]) -> None:
        super().__init__()
        if not windows:
            raise ValueError("WindowChannels needs at least one (lo, hi) window")
        for lo, hi in windows:
            if not lo < hi:
                raise ValueError(f"window needs lo < hi, got {(lo, hi)}")
        w = torch.tensor([tuple(map(float, x)) for x in windows], dtype=torch.float32)
        # non-persistent: derived from the spec, so exports of one-channel models stay loadable
        self.register_buffer("lo", w[:, 0].view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("scale", (1.0 / (w[:, 1] - w[:, 0])).view(1, -1, 1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] != 1:
            raise ValueError(f"WindowChannels takes one stored channel, got {tuple(image.shape)}")
        return ((image - self.lo.to(image.dtype)) * self.scale.to(image.dtype)).clamp(0.0, 1.0)


class VisionModel(nn.Module):
    """Multi-scale 3D ResNet tokens pooled per anatomy.

    Args:
        num_anatomies: M.
        depth, width, token_dim: the encoder (``resnet3d.MultiScaleTokenEncoder``).
        embed_dim, pool_heads, pool_dropout: the pooling (``pooling.AnatomyQueryPooling``).
        gradient_checkpointing: recompute each ResNet stage in backward (saves activations).
        input_windows: (lo, hi) windows in stored [0, 1] units, one encoder input channel each
            (``WindowChannels``); empty = the stored image as the one channel.
        stem_kernel: the encoder's stem conv kernel (7 = the paper's).
    """

    def __init__(self, num_anatomies: int, depth: str | int = 18, width: int = 64,
                 token_dim: int = 256, embed_dim: int = 256, pool_heads: int = 4,
                 pool_dropout: float = 0.1, gradient_checkpointing: bool = False,
                 input_windows: Sequence[tuple[float, float]] = (), stem_kernel: int = 7) -> None:
        super().__init__()
        self.num_anatomies = num_anatomies
        self.windows = WindowChannels(input_windows) if input_windows else None
        self.encoder = MultiScaleTokenEncoder(depth, width, token_dim,
                                              gradient_checkpointing=gradient_checkpointing,
                                              in_channels=len(input_windows) or 1, stem_kernel=stem_kernel)
        self.pooling = AnatomyQueryPooling(num_anatomies, token_dim, embed_dim, pool_heads, pool_dropout)

    def encode(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int, int]]]:
        """image [B, 1, D, H, W] stored intensities -> (level tokens [B, L_s, C], grids): the input
        windows (when set) then the encoder. Every caller that wants tokens goes through here."""
        return self.encoder(image if self.windows is None else self.windows(image))

    def forward(self, image: torch.Tensor, mask: torch.Tensor,
                token_transform: TokenTransform | None = None) -> dict[str, Any]:
        """image [B, 1, D, H, W] float, mask [B, D, H, W] int grouped ids -> dict (module doc)."""
        if image.ndim != 5 or mask.ndim != 4 or image.shape[0] != mask.shape[0] \
                or image.shape[2:] != mask.shape[1:]:
            raise ValueError(f"need image [B,1,D,H,W] and mask [B,D,H,W] of the same B, D, H, W; "
                             f"got {tuple(image.shape)} and {tuple(mask.shape)}")
        tokens, grids = self.encode(image)
        flags = anatomy_token_flags(mask, self.num_anatomies, STAGE_STRIDES)
        for s, (t, f) in enumerate(zip(tokens, flags)):
            # The two grids agree by construction (ceil(size / stride)); a mismatch means a changed
            # encoder, and would silently misalign anatomy and tokens, so fail loudly.
            if t.shape[1] != f.shape[-1]:
                raise RuntimeError(f"level {s + 1}: {t.shape[1]} tokens but {f.shape[-1]} flags")
        if token_transform is not None:
            new = list(token_transform(list(tokens), list(flags)))
            if [t.shape for t in new] != [t.shape for t in tokens]:
                raise ValueError("token_transform must return level tokens of unchanged shapes")
            tokens = new
        pooled = self.pooling(tokens, flags)
        return {"tokens": tokens, "flags": flags, "grids": grids, "embeds": pooled["embeds"],
                "valid": pooled["valid"], "intact": intact_anatomies(mask, self.num_anatomies)}


def volume_embedding(vision: VisionModel, image: torch.Tensor) -> torch.Tensor:
    """Whole-volume embeddings [B, E] (CLIP's image side, ``model.alignment: global``).

    The model is built with one "anatomy", the whole crop: every token of every level belongs to
    it, so its query pooling is a learned attention pooling over the volume (mean pooling at init,
    like the global average pooling of a CNN). Same encoder, pooling module and projection as the
    anatomy-wise models, only the token membership differs. image [B, 1, D, H, W].
    """
    if vision.num_anatomies != 1:
        raise ValueError(f"volume_embedding needs a vision model with one pooled 'anatomy' (the whole "
                         f"volume), got M={vision.num_anatomies}")
    whole = torch.ones((image.shape[0], *image.shape[2:]), dtype=torch.uint8, device=image.device)
    return vision(image, whole)["embeds"][:, 0]


def stored_windows(hu_windows: Sequence[tuple[float, float]],
                   hu_window: tuple[float, float]) -> list[tuple[float, float]]:
    """HU windows -> windows in stored [0, 1] units of images windowed to ``hu_window`` (lo, hi)."""
    lo, hi = map(float, hu_window)
    return [((a - lo) / (hi - lo), (b - lo) / (hi - lo)) for a, b in hu_windows]


def build_vision_model(model_spec: Any, num_anatomies: int, gradient_checkpointing: bool = False,
                       hu_window: tuple[float, float] | None = None) -> VisionModel:
    """VisionModel from ``spec.model`` (encoder_depth, encoder_width, token_dim, embed_dim,
    pool_heads, pool_dropout, input_windows, stem_kernel); ``gradient_checkpointing`` from
    spec.resources.activation_checkpointing; ``hu_window`` = spec.data.hu_window, the stored
    images' window, needed to place ``model.input_windows`` (given in HU)."""
    hu_windows = list(getattr(model_spec, "input_windows", []) or [])
    if hu_windows and hu_window is None:
        raise ValueError("model.input_windows is set: build_vision_model needs the stored hu_window")
    return VisionModel(num_anatomies, model_spec.encoder_depth, model_spec.encoder_width,
                       model_spec.token_dim, model_spec.embed_dim, model_spec.pool_heads,
                       getattr(model_spec, "pool_dropout", 0.1), gradient_checkpointing,
                       stored_windows(hu_windows, hu_window) if hu_windows else (),
                       getattr(model_spec, "stem_kernel", 7))


def build_token_encoder(model_spec: Any, gradient_checkpointing: bool = False,
                        hu_window: tuple[float, float] | None = None
                        ) -> tuple[WindowChannels | None, MultiScaleTokenEncoder]:
    """The input windows (None without ``model.input_windows``) and the token encoder of a
    :class:`VisionModel` built from ``spec.model``, without its anatomy pooling: for the methods
    that read the level tokens themselves (ASG, MeDSLIP). The attribute names match
    ``VisionModel.windows`` / ``.encoder``, so a ViSD export's encoder loads into them."""
    model = build_vision_model(model_spec, 1, gradient_checkpointing, hu_window)
    return model.windows, model.encoder

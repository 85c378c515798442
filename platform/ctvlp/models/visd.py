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

Shape legend: B batch, M anatomies, L tokens, C token dim, E embed dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ctvlp.models.pooling import AnatomyQueryPooling
from ctvlp.models.resnet3d import STAGE_STRIDES, MultiScaleTokenEncoder
from ctvlp.models.tokens import anatomy_token_flags, intact_anatomies

TokenTransform = Callable[[list[torch.Tensor], list[torch.Tensor]], list[torch.Tensor]]


class VisionModel(nn.Module):
    """Multi-scale 3D ResNet tokens pooled per anatomy.

    Args:
        num_anatomies: M.
        depth, width, token_dim: the encoder (``resnet3d.MultiScaleTokenEncoder``).
        embed_dim, pool_heads, pool_dropout: the pooling (``pooling.AnatomyQueryPooling``).
        gradient_checkpointing: recompute each ResNet stage in backward (saves activations).
    """

    def __init__(self, num_anatomies: int, depth: str | int = 18, width: int = 64,
                 token_dim: int = 256, embed_dim: int = 256, pool_heads: int = 4,
                 pool_dropout: float = 0.1, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.num_anatomies = num_anatomies
        self.encoder = MultiScaleTokenEncoder(depth, width, token_dim,
                                              gradient_checkpointing=gradient_checkpointing)
        self.pooling = AnatomyQueryPooling(num_anatomies, token_dim, embed_dim, pool_heads, pool_dropout)

    def forward(self, image: torch.Tensor, mask: torch.Tensor,
                token_transform: TokenTransform | None = None) -> dict[str, Any]:
        """image [B, 1, D, H, W] float, mask [B, D, H, W] int grouped ids -> dict (module doc)."""
        if image.ndim != 5 or mask.ndim != 4 or image.shape[0] != mask.shape[0] \
                or image.shape[2:] != mask.shape[1:]:
            raise ValueError(f"need image [B,1,D,H,W] and mask [B,D,H,W] of the same B, D, H, W; "
                             f"got {tuple(image.shape)} and {tuple(mask.shape)}")
        tokens, grids = self.encoder(image)
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


def build_vision_model(model_spec: Any, num_anatomies: int,
                       gradient_checkpointing: bool = False) -> VisionModel:
    """VisionModel from ``spec.model`` (encoder_depth, encoder_width, token_dim, embed_dim,
    pool_heads, pool_dropout); ``gradient_checkpointing`` from spec.resources.activation_checkpointing."""
    return VisionModel(num_anatomies, model_spec.encoder_depth, model_spec.encoder_width,
                       model_spec.token_dim, model_spec.embed_dim, model_spec.pool_heads,
                       getattr(model_spec, "pool_dropout", 0.1), gradient_checkpointing)

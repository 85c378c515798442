"""MeDSLIP in 3D: "MeDSLIP: Medical Dual-Stream Language-Image Pre-training with Pathology-Anatomy
Semantic Alignment" (Fan et al., 2024, arXiv 2403.10635); released code
``Shef-AIRE/MeDSLIP@7cfceb1`` ``PreTrain_MeDSLIP/models/model_MeDSLIP.py``.

The image side, everything MeDSLIP trains (there is no trainable text encoder: both query books
are frozen text embeddings)::

    x        = level-``token_level`` tokens                                [B, L, C]
    g        = gate(x) = Linear(C, C)(x)        (no sigmoid: released; ``gate_activation`` option)
    x_path   = Linear(C, d)(ReLU(Linear(C, C)(g * x)))                     pathology stream
    x_anat   = Linear(C, d)(ReLU(Linear(C, C)((1 - g) * x)))               anatomy stream
    Q_path   = Linear(H, d)(book_path),  Q_anat = the same Linear(H, d)(book_anat)   (shared, as released)
    P        = decoder_path(Q_path, x_path)   [B, F, d];   A = decoder_anat(Q_anat, x_anat)   [B, M, d]
    exist    = Linear(d, 2)(dropout(P)), Linear(d, 2)(dropout(A))          existence logits
    proto    = Linear(d, H)(dropout(P)), Linear(d, H)(dropout(A))          ProtoCL features

Books: ``book_path`` = [CLS] of the catalogue's finding names (the release: 75 observation
descriptions), ``book_anat`` = [CLS] of "It is located at {anatomy}." per anatomy of the grouping
(the release: 51 CXR anatomies). d = C = ``model.token_dim`` (256 by default, as released).

Where 3D departs from the release: the tokens are our ResNet's level tokens (the release's
ResNet-50 is truncated after layer3, 14 x 14 = 196 patches; level 3 is its counterpart, with
thousands of tokens per crop). ``memory="anatomy"`` (option) lets the decoders read only tokens
inside some anatomy's mask; the default ``"all"`` reads every token, as MeDSLIP uses no masks.

What the shared evaluation reads: ``scores`` = softmax(pathology existence logits)[..., 1]
[B, F] (the release's zero-shot score) and ``embeds`` = the L2-normalised anatomy-stream output
of each anatomy's query [B, M, E = d] (for the linear probe and the pictures).

Shape legend: B batch, L tokens, C token dim, d decoder width, H text hidden, F findings,
M anatomies.

Precision (docs/DESIGN.md): float32 weights and books; encoder, streams and decoders compute in
bf16 under autocast; the losses cast to float32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctvlp.models.asg import freeze_unread_levels
from ctvlp.models.query_decoder import QueryDecoder, init_normal_
from ctvlp.models.tokens import anatomy_token_flags, intact_anatomies


def _stream(c: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, d))


class MedSLIPModel(nn.Module):
    """Token encoder + MeDSLIP's dual streams, decoders and heads.

    Args:
        windows, encoder: from :func:`ctvlp.models.visd.build_token_encoder`.
        num_anatomies: M. pathology_book: [F, H]. anatomy_book: [M, H] (frozen, buffers).
        token_level: 1..4. gate_activation: "none" (released) or "sigmoid".
        memory: "all" (released) or "anatomy". decoder: num_layers, num_heads, ffn_dim, dropout.
    """

    def __init__(self, windows: nn.Module | None, encoder: nn.Module, num_anatomies: int,
                 pathology_book: torch.Tensor, anatomy_book: torch.Tensor, token_level: int = 3,
                 gate_activation: str = "none", memory: str = "all", decoder: Any = None) -> None:
        super().__init__()
        if gate_activation not in ("none", "sigmoid") or memory not in ("all", "anatomy"):
            raise ValueError(f"gate_activation must be none|sigmoid and memory all|anatomy, "
                             f"got {gate_activation!r}, {memory!r}")
        if anatomy_book.shape[0] != num_anatomies or anatomy_book.shape[1] != pathology_book.shape[1]:
            raise ValueError(f"anatomy book {tuple(anatomy_book.shape)} must be [M={num_anatomies}, H] with "
                             f"the pathology book's H ({tuple(pathology_book.shape)})")
        self.windows, self.encoder = windows, encoder
        self.num_anatomies, self.token_level = num_anatomies, token_level
        self.gate_activation, self.memory = gate_activation, memory
        self.register_buffer("pathology_book", pathology_book.float().clone())
        self.register_buffer("anatomy_book", anatomy_book.float().clone())
        c, h = encoder.token_dim, pathology_book.shape[1]
        self.gate = nn.Linear(c, c)
        self.pathology_stream, self.anatomy_stream = _stream(c, c), _stream(c, c)
        self.book_proj = nn.Linear(h, c)
        dec = (decoder.num_layers, decoder.num_heads, decoder.ffn_dim, decoder.dropout)
        self.pathology_decoder, self.anatomy_decoder = QueryDecoder(c, *dec), QueryDecoder(c, *dec)
        self.dropout = nn.Dropout(decoder.dropout)
        self.pathology_exist, self.anatomy_exist = nn.Linear(c, 2), nn.Linear(c, 2)
        self.pathology_proto, self.anatomy_proto = nn.Linear(c, h), nn.Linear(c, h)
        for m in (self.gate, self.pathology_stream, self.anatomy_stream, self.book_proj, self.pathology_exist,
                  self.anatomy_exist, self.pathology_proto, self.anatomy_proto):
            init_normal_(m)  # the release initialises every Linear N(0, 0.02)
        freeze_unread_levels(encoder, {token_level})

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Level tokens ``[B, L_s, C]`` of image ``[B, 1, D, H, W]`` (input windows first, if any)."""
        return self.encoder(image if self.windows is None else self.windows(image))[0]

    def streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [B, L, C] -> (pathology, anatomy) stream tokens, each [B, L, d]."""
        g = self.gate(x)
        if self.gate_activation == "sigmoid":
            g = torch.sigmoid(g)
        return self.pathology_stream(g * x), self.anatomy_stream((1 - g) * x)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """image [B, 1, D, H, W], mask [B, D, H, W] -> dict of the module docstring's tensors:
        "pathology" [B, F, d], "anatomy" [B, M, d], "pathology_logits" [B, F, 2],
        "anatomy_logits" [B, M, 2], "pathology_proto" [B, F, H], "anatomy_proto" [B, M, H],
        "scores" [B, F], "embeds" [B, M, d], "valid" / "intact" [B, M] bool."""
        x = self.encode(image)[self.token_level - 1]  # [B, L, C]
        flags = anatomy_token_flags(mask, self.num_anatomies)[self.token_level - 1]  # [B, M, L]
        pad = ~flags.any(1) if self.memory == "anatomy" else None  # [B, L]: background tokens
        x_path, x_anat = self.streams(x)
        path = self.pathology_decoder(self.book_proj(self.pathology_book), x_path, pad)  # [B, F, d]
        anat = self.anatomy_decoder(self.book_proj(self.anatomy_book), x_anat, pad)  # [B, M, d]
        path_out, anat_out = self.dropout(path), self.dropout(anat)
        path_logits = self.pathology_exist(path_out)
        valid = flags.any(-1)
        return {
            "pathology": path, "anatomy": anat, "pathology_logits": path_logits,
            "anatomy_logits": self.anatomy_exist(anat_out),
            "pathology_proto": self.pathology_proto(path_out), "anatomy_proto": self.anatomy_proto(anat_out),
            "scores": path_logits.float().softmax(-1)[..., 1],
            "embeds": F.normalize(anat.float(), dim=-1) * valid[..., None], "valid": valid,
            "intact": intact_anatomies(mask, self.num_anatomies),
        }

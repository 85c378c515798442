"""Query decoders over a frozen text book: the tag decoder of ASG and the two stream decoders of
MeDSLIP (both inherit MedKLIP's ``TransformerDecoder``).

A *book* is a fixed set of texts (finding names, anatomy prompts) embedded once by a frozen text
backbone: its [CLS] state in both releases (ASG ``main.py:59-65``: frozen Bio_ClinicalBERT [CLS]
of the 40 tag names; MeDSLIP ``model_MeDSLIP.py:33-46``), here [CLS] with ``model.text.pooling:
cls`` and the masked token mean with the default query pooling (:func:`book_pooling` says why).
The books are buffers of the model, so an export carries them and evaluation never needs the
backbone that made them.

The decoder is the releases' DETR-style pre-norm layer (``normalize_before=True``: self-attention
over the queries, cross-attention to the image tokens, ReLU FFN, each behind a LayerNorm and a
residual) without positional encodings (both pass ``pos=None, query_pos=None``), then a final
LayerNorm: exactly ``nn.TransformerDecoderLayer(norm_first=True)`` stacked by
``nn.TransformerDecoder(norm=LayerNorm)``. Released sizes: 4 layers, 4 heads, FFN 1024, dropout
0.1; weights N(0, 0.02) as the releases' ``_init_weights``.

Shape legend: B batch, Q queries, L image tokens, d decoder width, H text hidden size.

Precision (docs/DESIGN.md): float32 weights; under bf16 autocast the attention and FFN matmuls
run in bf16. The book is computed once in float32 outside autocast and stored float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ctvlp.models.text import pad_batch, tokenize_texts


@torch.no_grad()
def text_book(backbone: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int,
              pooling: str = "cls") -> torch.Tensor:
    """Embeddings ``[N, H]`` (float32) of ``texts`` through a backbone in eval mode.

    ``pooling``: "cls" (the [CLS] state, as both releases) or "mean" (the masked mean of the
    token states). The backbone's train/eval mode is restored afterwards; no gradient is recorded.
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"book pooling must be 'cls' or 'mean', got {pooling!r}")
    if not texts:
        raise ValueError("a text book needs at least one text")
    ids, mask = pad_batch(tokenize_texts(tokenizer, list(texts), max_length), tokenizer.pad_token_id or 0)
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            out = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    finally:
        backbone.train(was_training)
    if pooling == "cls":
        return out[:, 0].float().clone()
    w = mask.to(out.device, torch.float32)[..., None]
    return (out.float() * w).sum(1) / w.sum(1)


def book_pooling(text_pooling: str) -> str:
    """The book's pooling for ``model.text.pooling``: [CLS] as released with "cls"; with "query"
    (the default) the masked mean, which is where query pooling starts (zero-initialised query)
    and the pooling all-MiniLM-L6-v2 was trained with, and which, unlike [CLS], tells texts apart
    through a randomly initialised backbone (the debug encoder's [CLS] state is the same for
    every text)."""
    return "cls" if text_pooling == "cls" else "mean"


def init_normal_(module: nn.Module, std: float = 0.02) -> None:
    """The releases' ``_init_weights``: Linear and attention projection weights ~ N(0, std)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.normal_(m.in_proj_weight, 0.0, std)
            nn.init.normal_(m.out_proj.weight, 0.0, std)


class QueryDecoder(nn.Module):
    """Pre-norm transformer decoder: Q queries attend to a sample's image tokens.

    Args:
        dim: d, the width of queries and memory.
        num_layers, num_heads, ffn_dim, dropout: released 4, 4, 1024, 0.1.
    """

    def __init__(self, dim: int, num_layers: int = 4, num_heads: int = 4, ffn_dim: int = 1024,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by {num_heads} heads")
        layer = nn.TransformerDecoderLayer(dim, num_heads, ffn_dim, dropout, activation="relu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(dim))
        init_normal_(self)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor,
                memory_pad: torch.Tensor | None = None) -> torch.Tensor:
        """Args: queries [Q, d] (shared by the batch) or [B, Q, d]; memory [B, L, d]; memory_pad
        [B, L] bool, True = ignore that token (a sample with every token ignored attends to all).
        Returns [B, Q, d]."""
        b = memory.shape[0]
        if queries.dim() == 2:
            queries = queries.unsqueeze(0).expand(b, -1, -1)
        if memory_pad is not None:
            memory_pad = memory_pad & memory_pad.sum(-1, keepdim=True).lt(memory_pad.shape[-1])
        return self.decoder(queries.to(memory.dtype), memory, memory_key_padding_mask=memory_pad)

"""Anatomy query pooling: one learnable query per anatomy, batched masked cross-attention.

ViSD-Boost sec. 3.1, ``Q_{i,j} = CrossAttn(Q_j, f_{i,j}, f_{i,j})``; released code
``lavis/utils/model.py:281-289, 385-414``: ``query_tokens [M, C]`` initialised to zeros, one
``nn.MultiheadAttention(C, 4 heads, dropout 0.1)`` shared across anatomies, then a per-anatomy
``Linear(C -> E)`` and L2 normalisation.

Batched instead of the released per-(sample, anatomy) loop: every anatomy's query attends to all
level tokens of its sample with the logits ``[B, heads, M, L]`` masked by token membership
(``flags [B, M, L]``). Gathering per-anatomy padded key sets instead would need
``B x M x max_L x C`` (tens of GB at M=36 on a 96x256x384 crop).

Cheaper than projecting keys and values, with identical math: the key projection is folded into
the queries (``q.(W_k x + b_k) = (W_k^T q).x + const``, the constant cancels in the softmax) and
the value projection is applied after the weighted sum (``sum a_l (W_v x_l + b_v) =
W_v (sum a_l x_l) + b_v sum a_l``). At the paper's size (L ~ 337k tokens per sample, C = 256)
projecting K and V would cost ~1 TFLOP per forward and 4 GB of saved activations; the folded
form costs ``2 * B * L * C * heads * M`` multiply-adds (about 16x less at M = 4, 1.8x at M = 36)
and never concatenates the level tokens. Its one large temporary is the logits/attention
``[B, heads, M, L]`` (at M = 36 on the paper's crop ~0.6 G entries: ~2.3 GB as fp32). The parameters are those of a real ``nn.MultiheadAttention``
(same state-dict layout as the released module), and the parity test runs that module on the
selected tokens one (sample, anatomy) pair at a time.

An anatomy with no tokens in a sample gets a zero embedding and ``valid = False``; its row of the
mask is opened to all keys before the softmax so that no NaN enters the forward or backward pass.

Shape legend: B batch, M anatomies, L tokens (all levels), C token dim, E embed dim, h heads,
d head dim.

Precision (docs/DESIGN.md): float32 weights; under bf16 autocast the logits and weighted sums are
bf16 matmuls and the masked softmax runs as autocast chooses (float32 on CUDA); embeddings are
L2-normalised here and the losses recompute their logits in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class AnatomyQueryPooling(nn.Module):
    """Pool each anatomy's tokens into one L2-normalised embedding.

    Args:
        num_anatomies: M.
        token_dim: C (dimension of the tokens and of the queries).
        embed_dim: E (shared image-text space).
        num_heads: attention heads (4 in the released code).
        dropout: attention-weight dropout (0.1 in the released code).
    """

    def __init__(self, num_anatomies: int, token_dim: int = 256, embed_dim: int = 256,
                 num_heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if num_anatomies < 1:
            raise ValueError(f"num_anatomies must be >= 1, got {num_anatomies}")
        if token_dim % num_heads:
            raise ValueError(f"token_dim {token_dim} must be divisible by num_heads {num_heads}")
        self.num_anatomies, self.num_heads = num_anatomies, num_heads
        self.query = nn.Parameter(torch.zeros(num_anatomies, token_dim))  # zero init as released
        self.attn = nn.MultiheadAttention(token_dim, num_heads, dropout=dropout, batch_first=True)
        # Per-anatomy Linear(C -> E) as one batched weight: out[b, m] = x[b, m] @ W[m] + bias[m].
        w = torch.empty(num_anatomies, token_dim, embed_dim)
        for m in range(num_anatomies):  # nn.Linear's default init, per anatomy
            nn.init.kaiming_uniform_(w[m].T, a=5**0.5)
        self.proj_weight = nn.Parameter(w)
        bound = 1.0 / token_dim**0.5
        self.proj_bias = nn.Parameter(torch.empty(num_anatomies, embed_dim).uniform_(-bound, bound))

    def attend(self, tokens: torch.Tensor | Sequence[torch.Tensor],
               flags: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked multi-head cross-attention of the M queries over each sample's tokens.

        Args:
            tokens: [B, L, C], or a list of level tokens [B, L_s, C] (never concatenated).
            flags: [B, M, L] bool (token l belongs to anatomy m), or a list [B, M, L_s].

        Returns:
            pooled [B, M, C] (the MHA output, before the per-anatomy projection; zero where
            invalid) and valid [B, M] bool (anatomy has >= 1 token).
        """
        tokens, flags = _as_list(tokens), _as_list(flags)
        flag = self._check(tokens, flags)  # [B, M, L]
        b, c = tokens[0].shape[0], tokens[0].shape[2]
        h, m = self.num_heads, self.num_anatomies
        d = c // h
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)  # [C, C] each, rows = (head, d)
        b_q, _, b_v = self.attn.in_proj_bias.chunk(3)
        q = F.linear(self.query, w_q, b_q).view(m, h, d).transpose(0, 1)  # [h, M, d]
        # W_k folded into the queries: q.(W_k x + b_k) = (W_k^T q).x + q.b_k; the last term is
        # the same for all keys of a query, so the softmax drops it.
        qk = torch.einsum("hmd,hdc->hmc", q, w_k.view(h, d, c)).reshape(h * m, c) * d**-0.5
        logits = torch.cat([torch.matmul(qk.to(t.dtype), t.transpose(1, 2)) for t in tokens], -1)
        valid = flag.any(dim=-1)  # [B, M]
        allowed = flag | ~valid[..., None]  # empty rows see every key: finite, zeroed below
        attn = logits.view(b, h, m, -1).masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
        attn = F.dropout(attn, self.attn.dropout, self.training)  # [B, h, M, L]
        # W_v folded out of the sum: sum_l a_l (W_v x_l + b_v) = W_v (sum_l a_l x_l) + b_v sum_l a_l.
        parts = attn.reshape(b, h * m, -1).split([t.shape[1] for t in tokens], dim=-1)
        mixed = sum(torch.matmul(a.to(t.dtype), t) for a, t in zip(parts, tokens))  # [B, hM, C]
        out = torch.einsum("bhmc,hdc->bmhd", mixed.view(b, h, m, c), w_v.view(h, d, c))
        mass = attn.sum(-1).transpose(1, 2) if self.training and self.attn.dropout > 0 else 1.0
        out = out + b_v.view(h, d) * (mass[..., None] if torch.is_tensor(mass) else mass)
        out = self.attn.out_proj(out.reshape(b, m, c))  # [B, M, C]
        return out * valid[..., None].to(out.dtype), valid

    def _check(self, tokens: list[torch.Tensor], flags: list[torch.Tensor]) -> torch.Tensor:
        if len(tokens) != len(flags) or not tokens:
            raise ValueError(f"need as many token levels as flag levels (>= 1), got {len(tokens)} "
                             f"and {len(flags)}")
        b = tokens[0].shape[0]
        for t, f in zip(tokens, flags):
            if t.ndim != 3 or t.shape[0] != b or t.shape[2] != self.query.shape[1]:
                raise ValueError(f"tokens must be [B, L, C={self.query.shape[1]}], got {tuple(t.shape)}")
            if f.shape != (b, self.num_anatomies, t.shape[1]) or f.dtype != torch.bool:
                raise ValueError(f"flags must be bool [B={b}, M={self.num_anatomies}, L={t.shape[1]}], "
                                 f"got {f.dtype} {tuple(f.shape)}")
        return torch.cat(flags, dim=-1)

    def forward(self, tokens: torch.Tensor | Sequence[torch.Tensor],
                flags: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Args: tokens [B, L, C] or a list of level tokens [B, L_s, C]; flags [B, M, L] or a list
        of [B, M, L_s] (same level order). Returns {"embeds": [B, M, E] unit-norm (zero where
        invalid), "valid": [B, M] bool}.
        """
        pooled, valid = self.attend(tokens, flags)
        emb = torch.einsum("bmc,mce->bme", pooled, self.proj_weight.to(pooled.dtype))
        emb = emb + self.proj_bias.to(emb.dtype)
        emb = F.normalize(emb, dim=-1) * valid[..., None].to(emb.dtype)
        return {"embeds": emb, "valid": valid}


def _as_list(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [x] if isinstance(x, torch.Tensor) else list(x)

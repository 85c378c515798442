"""Prototypical contrastive learning (ProtoCL) of MeDSLIP (Fan et al., 2024, arXiv 2403.10635);
released code ``Shef-AIRE/MeDSLIP@7cfceb1``: ``models/model_MeDSLIP.py:309-429, 480-487`` (loss)
and ``dataset/dataset.py`` ``triplet_extraction_*`` (negative sampling, ``num_neg_samples=7``).

A query of one stream that is *present* in the study (existence label 1) is scored against the
other stream's frozen text book. For the decoder output o_bq projected to the book's width
(``Linear(d -> H)``), the links L_bq (book entries related to q in the study's organ x finding
matrix) and K sampled negatives n_1..n_K (book entries not linked to q)::

    p_bq   = mean_{v in L_bq} book_v                         the prototype: mean linked embedding
    z_bq   = [<o_bq, p_bq>, <o_bq, book_n1>, ..., <o_bq, book_nK>]     no temperature, as released
    L_proto = mean_{(b, q) present} CE(z_bq, 0)

Both streams use it (pathology queries against the anatomy book, anatomy queries against the
pathology book) and the two are summed, weight 1 each (the paper's alpha = 1 in the code).

Where 3D departs from the release: the release draws exactly 7 negatives (it fails with fewer
candidates; a CXR has 51 anatomy prompts). With M anatomies a pathology has at most M - 1
unlinked anatomies (3 on the chest grouping), so here at most K are drawn and missing slots are
masked out of the softmax (:func:`sample_negatives`). Queries present but without any link (an
anatomy the parser calls abnormal for a finding outside the catalogue) have no prototype and are
left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctvlp.precision import float32_compute

__all__ = ["sample_negatives", "prototype_contrast_loss"]


def sample_negatives(links: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Up to ``k`` distinct book indices per query, drawn uniformly among its *unlinked* entries.

    Args:
        links: ``[B, Q, V]`` bool, True where book entry v is linked to query q.
        k: negatives per query (7 as released).
        generator: random source (default: torch's global one, seeded by the runner).

    Returns:
        ``[B, Q, k]`` int64 indices into the book; -1 where fewer than ``k`` entries are unlinked.
    """
    if links.dim() != 3:
        raise ValueError(f"links must be [B, Q, V], got {tuple(links.shape)}")
    keys = torch.rand(links.shape, generator=generator, device=links.device if generator is None else "cpu")
    keys = keys.to(links.device).masked_fill(links, -1.0)  # linked entries sort last, marked < 0
    take = min(k, links.shape[-1])
    top, idx = keys.topk(take, dim=-1)  # a uniform random subset of the unlinked entries
    idx = idx.masked_fill(top < 0, -1)
    if take < k:
        idx = F.pad(idx, (0, k - take), value=-1)
    return idx


@float32_compute  # the dot products and the cross-entropy in float32 (docs/DESIGN.md, Precision)
def prototype_contrast_loss(queries: torch.Tensor, book: torch.Tensor, links: torch.Tensor,
                            present: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """L_proto of one stream.

    Args:
        queries: ``[B, Q, H]`` decoder outputs projected to the book width (o above).
        book: ``[V, H]`` the other stream's frozen text embeddings.
        links: ``[B, Q, V]`` bool, positive links per query.
        present: ``[B, Q]`` bool, the query's existence label is 1.
        negatives: ``[B, Q, K]`` int64 book indices, -1 = no negative in that slot.

    Returns:
        Scalar float32: mean CE over present queries with at least one link; zero (attached) if none.
    """
    b, q, h = queries.shape
    if book.dim() != 2 or book.shape[1] != h or links.shape != (b, q, book.shape[0]) \
            or present.shape != (b, q) or negatives.shape[:2] != (b, q):
        raise ValueError(f"need queries [B, Q, H], book [V, H], links [B, Q, V], present [B, Q], negatives "
                         f"[B, Q, K]; got {tuple(queries.shape)}, {tuple(book.shape)}, {tuple(links.shape)}, "
                         f"{tuple(present.shape)}, {tuple(negatives.shape)}")
    rows = present.bool() & links.any(-1)  # [B, Q]
    if not rows.any():
        return queries.sum() * 0.0
    weights = links.float() / links.float().sum(-1, keepdim=True).clamp_min(1)  # [B, Q, V]
    proto = weights @ book  # [B, Q, H]: mean of the linked book entries
    cand = torch.cat([proto[..., None, :], book[negatives.clamp_min(0)]], dim=-2)  # [B, Q, 1 + K, H]
    logits = torch.einsum("bqh,bqkh->bqk", queries, cand)  # [B, Q, 1 + K]
    slot_ok = torch.cat([torch.ones_like(negatives[..., :1], dtype=torch.bool), negatives >= 0], dim=-1)
    logits = logits.masked_fill(~slot_ok, torch.finfo(logits.dtype).min)
    target = torch.zeros(int(rows.sum()), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits[rows], target)

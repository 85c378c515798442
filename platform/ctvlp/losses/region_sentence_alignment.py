"""Anatomical region-sentence alignment (ARSA) of ASG (Li et al., MICCAI 2024, arXiv 2403.09294);
released code ``ASGMVLP_CODE@088e896`` ``main.py:123-136``.

Within one scan b, region r_bj (anatomy j's image feature) and sentence s_bj (the embedding of the
report sentences about anatomy j), over the anatomies J_b present in both::

    S_b[j, k] = <r_bj, s_bk> / tau                     j, k in J_b (other entries -inf)
    L_ARSA    = mean_{b, j in J_b} CE(S_b[j, :], j) + mean_{b, j in J_b} CE(S_b[:, j], j)

i.e. each region must pick its own sentences among the *same scan's* sentences, and each sentence
its region; the two directions are summed, each averaged over all (scan, anatomy) rows of the
batch (the release flattens the batch and uses ``ignore_index=-100`` for padded rows). A scan with
one anatomy contributes rows with loss 0, as released. No cross-scan negatives, so no gather.

As released, region and sentence features are means of L2-normalised per-token projections and
are *not* renormalised after pooling (``roi_align`` on the normalised patch embeddings; the mean
of the normalised word embeddings), so |r|, |s| <= 1.

Where 3D departs from the release: a region is an anatomy's segmentation mask on the token grid
(the mean over the tokens its mask touches, :class:`ctvlp.models.asg.ASGVision`) instead of a
box through ``roi_align`` (2D only); the sentences of anatomy j are those our report parser
assigns to it (the release's alignment rules were never published). Organ identity alone can
solve this objective (disjoint masks, sentences that name their organ): see
``bench/asg_shortcut.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctvlp.precision import float32_compute

__all__ = ["region_sentence_logits", "region_sentence_alignment_loss"]


def region_sentence_logits(regions: torch.Tensor, sentences: torch.Tensor, valid: torch.Tensor,
                           temperature: torch.Tensor | float) -> torch.Tensor:
    """``[B, M, M]`` logits ``<r_bj, s_bk> / tau`` with invalid pairs at the dtype's lowest value."""
    if regions.dim() != 3 or regions.shape != sentences.shape or valid.shape != regions.shape[:2]:
        raise ValueError(f"need regions, sentences [B, M, E] and valid [B, M]; got {tuple(regions.shape)}, "
                         f"{tuple(sentences.shape)}, {tuple(valid.shape)}")
    logits = torch.einsum("bje,bke->bjk", regions.float(), sentences.float()) / temperature
    pair = valid[:, :, None] & valid[:, None, :]
    # lowest finite value, not -inf: rows of invalid anatomies stay finite (they are dropped below)
    return logits.masked_fill(~pair, torch.finfo(logits.dtype).min)


@float32_compute  # logits / tau and the cross-entropy in float32 (docs/DESIGN.md, Precision)
def region_sentence_alignment_loss(regions: torch.Tensor, sentences: torch.Tensor, valid: torch.Tensor,
                                   temperature: torch.Tensor | float) -> torch.Tensor:
    """L_ARSA of a batch of scans.

    Args:
        regions: ``[B, M, E]`` region features r (means of normalised token projections).
        sentences: ``[B, M, E]`` sentence features s (means of normalised word projections).
        valid: ``[B, M]`` bool, anatomy j is in the scan's crop *and* has report sentences.
        temperature: scalar tau (0.07 as released).

    Returns:
        Scalar float32; zero (attached to the graph) when no anatomy is valid.
    """
    if not valid.any():
        return (regions.sum() + sentences.sum()) * 0.0
    logits = region_sentence_logits(regions, sentences, valid.bool(), temperature)  # [B, M, M]
    m = logits.shape[-1]
    target = torch.arange(m, device=logits.device).expand(logits.shape[:2])  # [B, M]
    target = target.masked_fill(~valid.bool(), -100)
    r2s = F.cross_entropy(logits.reshape(-1, m), target.reshape(-1), ignore_index=-100)
    s2r = F.cross_entropy(logits.transpose(1, 2).reshape(-1, m), target.reshape(-1), ignore_index=-100)
    return r2s + s2r

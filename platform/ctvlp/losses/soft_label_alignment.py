"""Soft-label image-report alignment (ERL, "external representation learning") of ASG (Li et al.,
MICCAI 2024, arXiv 2403.09294); released code ``ASGMVLP_CODE@088e896`` ``main.py:149-167``.

With the IRA logits ``S = <v_i, t_k> / tau`` ([B, B], :mod:`ctvlp.losses.image_report_alignment`)
and each study's tag vector y_i in {0, 1}^F (its findings)::

    C_ik = <y_i, y_k> / (|y_i| |y_k|)            cosine of the tag vectors (0 for an all-zero vector)
    Y    = L1norm_rows(0.8 I + 0.2 C + 1e-6)     soft targets: same study first, then same findings
    P    = softmax_rows(S),  P' = softmax_rows(S^T)
    L_ERL = 1/2 [ 1/2 (KL(Y || P) + KL(P || Y)) + 1/2 (KL(Y || P') + KL(P' || Y)) ]

with ``KL(A || B) = 1/B * sum_ik A_ik (log A_ik - log B_ik)`` (``F.kl_div(..., "batchmean")``).
As released, the same Y serves both directions (Y is not symmetric after the row normalisation),
and ERL is added to the hard-target IRA, not substituted for it.

Where 3D departs from the release: the features and tags of every rank are gathered (the release
has no gather), so B is the global batch and every rank computes the same global loss; the tags
are the labels-table findings of the study (``ctvlp.tasks.findings``) instead of the 40 RadGraph
tags, with unknown findings counted as absent (the release maps -1 to 0 the same way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctvlp import dist
from ctvlp.losses.image_report_alignment import gathered_logits
from ctvlp.precision import float32_compute

__all__ = ["soft_targets", "soft_label_alignment_loss"]


def soft_targets(tags: torch.Tensor, hard: float = 0.8) -> torch.Tensor:
    """``Y = L1norm_rows(hard * I + (1 - hard) * cos(tags) + 1e-6)``: tags ``[B, F]`` -> ``[B, B]``."""
    y = F.normalize(tags.float(), dim=-1)  # all-zero rows stay zero: cos = 0
    eye = torch.eye(tags.shape[0], device=tags.device)
    return F.normalize(hard * eye + (1.0 - hard) * (y @ y.t()) + 1e-6, p=1, dim=-1)


def _symmetric_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(KL(Y || softmax S) + KL(softmax S || Y)) / 2``, each summed over entries / rows."""
    logp = F.log_softmax(logits, dim=-1)
    forward = F.kl_div(logp, target, reduction="batchmean")
    backward = F.kl_div(target.log(), logp.exp(), reduction="batchmean")
    return (forward + backward) / 2


@float32_compute  # softmax, logs and the KL terms in float32 (docs/DESIGN.md, Precision)
def soft_label_alignment_loss(img: torch.Tensor, rep: torch.Tensor, tags: torch.Tensor,
                              temperature: torch.Tensor | float, hard: float = 0.8) -> torch.Tensor:
    """L_ERL over the global batch.

    Args:
        img: ``[B, E]`` global image embeddings (L2-normalised, local shard).
        rep: ``[B, E]`` report embeddings (L2-normalised, local shard).
        tags: ``[B, F]`` 0/1 finding vectors of the same studies (local shard).
        temperature: scalar tau of the IRA logits.
        hard: weight of the identity in the soft targets (0.8 as released).

    Returns:
        Scalar float32 loss.
    """
    if tags.dim() != 2 or tags.shape[0] != img.shape[0]:
        raise ValueError(f"tags must be [B={img.shape[0]}, F], got {tuple(tags.shape)}")
    logits = gathered_logits(img, rep, temperature)  # [Bg, Bg]
    target = soft_targets(dist.gather_with_grad(tags.float()), hard)
    return (_symmetric_kl(logits, target) + _symmetric_kl(logits.t(), target)) / 2

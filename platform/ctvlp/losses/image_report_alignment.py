"""Image-report alignment (IRA) of ASG: "Anatomical Structure-Guided Medical Vision-Language
Pre-training" (Li et al., MICCAI 2024, arXiv 2403.09294); released code ``ASGMVLP_CODE@088e896``
``main.py:113-121``.

For the L2-normalised global image embeddings v_i and report embeddings t_k of a batch of B
image-report pairs, with a fixed temperature tau (0.07 as released)::

    S_ik  = <v_i, t_k> / tau                                   S: [B, B]
    L_IRA = CE(S, arange(B)) + CE(S^T, arange(B))              CE: mean over the B rows

Both directions are *summed*, as released (``loss_ira0 + loss_ira1``), not averaged.

Where 3D departs from the release: the release contrasts each GPU's 72 pairs only (no gather).
3D crops give a few pairs per GPU, so here the features of every rank are gathered
(:func:`ctvlp.dist.gather_with_grad`) and B is the global batch; every rank computes the same
global loss (see :mod:`ctvlp.dist` for the gradient convention). With one process it is the
release's loss exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctvlp import dist
from ctvlp.precision import float32_compute

__all__ = ["gathered_logits", "image_report_alignment_loss"]


def gathered_logits(img: torch.Tensor, rep: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """``S = <v_i, t_k> / tau`` over the global batch: img, rep ``[B, E]`` (local shards) -> ``[Bg, Bg]``."""
    if img.dim() != 2 or img.shape != rep.shape:
        raise ValueError(f"img and rep must both be [B, E], got {tuple(img.shape)} and {tuple(rep.shape)}")
    g_img = dist.gather_with_grad(img).float()  # [Bg, E]
    g_rep = dist.gather_with_grad(rep).float()
    return g_img @ g_rep.t() / temperature


@float32_compute  # logits / tau and the cross-entropy in float32 (docs/DESIGN.md, Precision)
def image_report_alignment_loss(img: torch.Tensor, rep: torch.Tensor,
                                temperature: torch.Tensor | float) -> torch.Tensor:
    """L_IRA over the global batch.

    Args:
        img: ``[B, E]`` global image embeddings v (L2-normalised, local shard).
        rep: ``[B, E]`` report embeddings t of the same studies (L2-normalised, local shard).
        temperature: scalar tau; ``S = <v, t> / tau``.

    Returns:
        Scalar float32: ``CE(S, I) + CE(S^T, I)``, each the mean over the global batch's rows.
    """
    logits = gathered_logits(img, rep, temperature)  # [Bg, Bg]
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)

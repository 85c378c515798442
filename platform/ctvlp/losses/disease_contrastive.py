"""Disease-level visual contrastive loss: eq. (2) of ViSD-Boost (Cao et al., ICCV 2025), phase 1.

For anatomy j, online query Q^I_ij and momentum-encoder query Q^I'_kj of a differently augmented
view (both L2-normalised), y_ij = 1 abnormal::

    L = -1/(B*M) * sum_i sum_j { I[y_ij=1] * log softmax_k(<Q^I_ij, Q^I'_kj>/tau)[i]
                                 + sum_p I[y_ij=0] I[y_pj=0] * log softmax_k(<Q^I_ij, Q^I'_kj>/tau)[p] }

* An abnormal sample's only positive is its own momentum view (instance discrimination: no two
  lesions are alike). A normal sample's positives are the momentum views of *all* normal samples
  of that anatomy, itself included (normal anatomies form one class).
* The denominator runs over the momentum features of every sample in which j is intact, over the
  global batch (online features are gathered with gradient for the local shard, momentum features
  without); no queue (the paper mentions none; fVLM's config has ``queue_size: 0``).
* ``positives="sum"`` (default) is eq. (2) as printed: a normal row adds one log term per normal
  positive, so its weight grows with the number of normals. ``positives="mean"`` divides each row
  by its number of positives (SupCon's L_out, equivalently fVLM-style row-normalised soft targets;
  suggested in method.md sec. 3.2) and keeps every row's weight at 1.
* Reduction: mean over the intact (sample, anatomy) pairs of the global batch (eq. 2's 1/(B*M)
  restricted to intact pairs, as in eq. 1). One direction only (online -> momentum), as printed.

No code for eq. (2) was released; the momentum encoder is :class:`ctvlp.models.momentum.MomentumEncoder`
(EMA decay 0.995, the ViSD/BLIP default).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ctvlp import dist
from ctvlp.losses.anatomy_infonce import check_pair_inputs
from ctvlp.precision import float32_compute

__all__ = ["disease_contrastive_loss", "disease_positive_mask"]


def disease_positive_mask(valid: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """Positive sets of eq. (2) as ``[M, B, B]`` bool: ``pos[j, i, p]`` = p is a positive of i.

    Args:
        valid: ``[B, M]`` bool intact flags. abnormal: ``[B, M]`` labels (1 abnormal).
    """
    v = valid.t().bool()  # [M, B]
    normal = (abnormal.t() == 0) & v
    eye = torch.eye(v.shape[1], dtype=torch.bool, device=v.device)[None]
    return (eye & v[:, :, None]) | (normal[:, :, None] & normal[:, None, :])


@float32_compute  # logits / tau and the cross-entropy in float32 (docs/DESIGN.md, Precision)
def disease_contrastive_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    abnormal: torch.Tensor,
    temperature: torch.Tensor | float,
    positives: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Eq. (2) over the global batch.

    Args:
        q: ``[B, M, E]`` online anatomy embeddings Q^I (L2-normalised, local shard).
        k: ``[B, M, E]`` momentum embeddings Q^I' of the other view (L2-normalised; detached here).
        valid: ``[B, M]`` bool, anatomy intact in *both* views.
        abnormal: ``[B, M]`` 1 = abnormal.
        temperature: scalar tau, ``logits = <q, k> / tau`` (spec.model.disease_temperature).
        positives: ``"sum"`` (eq. 2 as printed) or ``"mean"`` (SupCon L_out).

    Returns:
        Scalar float32 loss; zero (attached to ``q``'s graph) when no pair is intact.
    """
    check_pair_inputs(q, k, valid, abnormal)
    if positives not in ("sum", "mean"):
        raise ValueError(f"positives must be 'sum' or 'mean', got {positives!r}")
    g_q = dist.gather_with_grad(q).float()  # [Bg, M, E]
    g_k = dist.gather_with_grad(k.detach()).float()
    g_valid = dist.gather_with_grad(valid.bool())  # [Bg, M]
    g_abn = dist.gather_with_grad(abnormal.long())

    v = g_valid.t()  # [M, Bg]
    logits = torch.einsum("bme,kme->mbk", g_q, g_k) / temperature  # [M, Bg(online), Bg(momentum)]
    cand = v[:, None, :].expand_as(logits)  # candidates: momentum features of intact samples
    # lowest finite value instead of -inf: a row without candidates stays finite (it is masked below)
    logp = F.log_softmax(logits.masked_fill(~cand, torch.finfo(logits.dtype).min), dim=-1)
    pos = disease_positive_mask(g_valid, g_abn)  # [M, Bg, Bg], only intact pairs
    per_row = -(logp.masked_fill(~pos, 0.0)).sum(-1)  # [M, Bg]
    if positives == "mean":
        per_row = per_row / pos.sum(-1).clamp_min(1)
    per_row = per_row * v
    return per_row.sum() / v.sum().clamp_min(1)

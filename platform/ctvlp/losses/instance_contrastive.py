"""Instance-level visual contrast (VSEI, ViSD-Boost Table 5): eq. (2) with every sample its own class.

ViSD-Boost's ablation compares its disease-level visual semantic enhancement (VSED, eq. 2 of
:mod:`ctvlp.losses.disease_contrastive`) with the instance-level contrastive learning it builds on
(MoCo, He et al. CVPR 2020, arXiv:1911.05722; InfoNCE without a queue, as eq. 2 has none). For
anatomy j, online query Q^I_ij and momentum query Q^I'_kj of the other view (L2-normalised)::

    L = -1/(B*M) * sum_i sum_j log softmax_k(<Q^I_ij, Q^I'_kj> / tau)[i]

The only positive of a (sample, anatomy) pair is its own momentum view, whatever its label: the
normal anatomies are *not* pooled into one class. This is exactly eq. 2 with every y_ij = 1
(eq. 2 already treats each abnormal sample as its own instance), so the loss calls
:func:`ctvlp.losses.disease_contrastive.disease_contrastive_loss` with all labels abnormal and
inherits its global batch (online features gathered with gradient for the local shard, momentum
features without), its candidate set (the momentum features of every sample in which j is
intact) and its reduction (mean over intact pairs). The labels are never read: VSEI needs none.

Shapes: q, k ``[B, M, E]``, valid ``[B, M]`` bool. Returns a float32 scalar.
"""

from __future__ import annotations

import torch

from ctvlp.losses.disease_contrastive import disease_contrastive_loss

__all__ = ["instance_contrastive_loss"]


def instance_contrastive_loss(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor,
                              temperature: torch.Tensor | float) -> torch.Tensor:
    """Instance discrimination per anatomy over the global batch (module docstring).

    Args:
        q: ``[B, M, E]`` online anatomy embeddings (L2-normalised, local shard).
        k: ``[B, M, E]`` momentum embeddings of the other view (L2-normalised; detached).
        valid: ``[B, M]`` bool, anatomy intact in both views.
        temperature: scalar tau, ``logits = <q, k> / tau``.

    Returns:
        Scalar float32 loss; zero (attached to ``q``'s graph) when no pair is intact.
    """
    every_sample_its_own_class = torch.ones(valid.shape, dtype=torch.long, device=valid.device)
    return disease_contrastive_loss(q, k, valid, every_sample_its_own_class, temperature)

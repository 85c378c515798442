"""Per-query existence classification of MeDSLIP: "MeDSLIP: Medical Dual-Stream Language-Image
Pre-training with Pathology-Anatomy Semantic Alignment" (Fan et al., 2024, arXiv 2403.10635);
released code ``Shef-AIRE/MeDSLIP@7cfceb1`` ``PreTrain_MeDSLIP/models/model_MeDSLIP.py:452-478``.

Each query q of a stream (a pathology of the finding book, or an anatomy of the anatomy book)
gets two logits from a ``Linear(d -> 2)`` on its decoder output; with y_bq in {0, 1}::

    L_exist = mean_{(b, q) labelled} CE(logits_bq, y_bq)

computed per stream and summed (``loss_ce_pathology + loss_ce_anatomy``, weight 1 each). Labels
-1 (not mentioned) and 2 (uncertain, RadGraph) are left out, as released.

Where 3D departs from the release: a pathology's label is its labels-table value when its
anatomy is in the training crop, else -1; an anatomy's label is the report parser's
normal/abnormal label when the anatomy is in the crop, else -1 (RadGraph gives both in the
release; see ``ctvlp.tasks.findings``). Zero-shot scores are ``softmax(logits)[..., 1]`` of the
pathology queries (released ``test.py``), not prompt similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctvlp.precision import float32_compute

__all__ = ["query_existence_loss"]


@float32_compute  # the cross-entropy in float32 (docs/DESIGN.md, Precision)
def query_existence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_exist of one stream.

    Args:
        logits: ``[B, Q, 2]`` existence logits (index 1 = present).
        labels: ``[B, Q]`` int: 1 present, 0 absent, -1 or 2 left out.

    Returns:
        Scalar float32, the mean CE over labelled queries; zero (attached) when none is labelled.
    """
    if logits.dim() != 3 or logits.shape[-1] != 2 or labels.shape != logits.shape[:2]:
        raise ValueError(f"need logits [B, Q, 2] and labels [B, Q]; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    known = (labels == 0) | (labels == 1)
    if not known.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], labels[known].long())

"""Image-tag recognition (IRL, "internal representation learning") of ASG (Li et al., MICCAI 2024,
arXiv 2403.09294); released code ``ASGMVLP_CODE@088e896`` ``main.py:138-147``.

The tag decoder (:class:`ctvlp.models.query_decoder.QueryDecoder`, queries = frozen text
embeddings of the finding names) gives one logit z_bf per study b and finding f::

    L_IRL = mean_{(b, f) labelled} BCEWithLogits(z_bf, y_bf)          y in {0, 1}

weighted 5 in ASG's total (``loss_ira + loss_arsa + 5 * loss_bce + loss_soft``).

Where 3D departs from the release: the release maps an unmentioned tag (-1) to 0 and averages over
all B x 40 entries. Here a label is left out (-1) when the labels table lacks it or when the
finding's anatomy is not in the training crop (a 3D crop can cut it away; a chest X-ray always
shows the whole chest); every other entry counts as in the release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctvlp.precision import float32_compute

__all__ = ["image_tag_recognition_loss"]


@float32_compute  # the BCE in float32 (docs/DESIGN.md, Precision)
def image_tag_recognition_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_IRL.

    Args:
        logits: ``[B, F]`` tag logits z.
        labels: ``[B, F]`` int, 1 present / 0 absent / -1 left out.

    Returns:
        Scalar float32, the mean BCE over labelled entries; zero (attached) when none is labelled.
    """
    if logits.shape != labels.shape or logits.dim() != 2:
        raise ValueError(f"logits and labels must both be [B, F], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], labels[known].float())

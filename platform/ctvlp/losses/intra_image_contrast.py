"""Intra-image contrastive learning (ICL) of MeDSLIP (Fan et al., 2024, arXiv 2403.10635);
released code ``Shef-AIRE/MeDSLIP@7cfceb1`` ``models/model_MeDSLIP.py:289-304``.

For the decoder outputs of one image, pathology queries P_bf ([F, d]) and anatomy queries A_bj
([M, d]), and the study's organ x finding matrix G_bjf in {1, 0, -1}::

    l_bjf  = <A_bj, P_bf>                                 ap_logits, no temperature (released bmm)
    L_ICL  = mean_{(b, j, f): G_bjf >= 0} BCEWithLogits(l_bjf, G_bjf)

weight 1 in the released total (the paper's beta). The decoder outputs enter before the dropout
that precedes the existence classifiers, as released.

Where 3D departs from the release: G comes from the RadGraph anatomy x observation adjacency in
the release; here it is built from the labels table (one anatomy per finding in the catalogue,
``ctvlp.tasks.findings.organ_finding_matrix``): G_bjf is the finding's label on its own anatomy
when that anatomy is in the crop, and -1 (unmentioned, left out) everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctvlp.precision import float32_compute

__all__ = ["pathology_anatomy_logits", "intra_image_contrast_loss"]


def pathology_anatomy_logits(pathology: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
    """``l_bjf = <A_bj, P_bf>``: pathology ``[B, F, d]``, anatomy ``[B, M, d]`` -> ``[B, M, F]``."""
    if pathology.dim() != 3 or anatomy.dim() != 3 or pathology.shape[0] != anatomy.shape[0] \
            or pathology.shape[-1] != anatomy.shape[-1]:
        raise ValueError(f"need pathology [B, F, d] and anatomy [B, M, d], got {tuple(pathology.shape)} "
                         f"and {tuple(anatomy.shape)}")
    return torch.einsum("bjd,bfd->bjf", anatomy.float(), pathology.float())


@float32_compute  # the BCE in float32 (docs/DESIGN.md, Precision)
def intra_image_contrast_loss(pathology: torch.Tensor, anatomy: torch.Tensor,
                              matrix: torch.Tensor) -> torch.Tensor:
    """L_ICL.

    Args:
        pathology: ``[B, F, d]`` pathology-stream decoder outputs.
        anatomy: ``[B, M, d]`` anatomy-stream decoder outputs.
        matrix: ``[B, M, F]`` int organ x finding matrix, 1 / 0 / -1 (left out).

    Returns:
        Scalar float32, the mean BCE over entries >= 0; zero (attached) when there is none.
    """
    logits = pathology_anatomy_logits(pathology, anatomy)  # [B, M, F]
    if matrix.shape != logits.shape:
        raise ValueError(f"matrix must be [B, M, F] = {tuple(logits.shape)}, got {tuple(matrix.shape)}")
    known = matrix >= 0
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], matrix[known].float())

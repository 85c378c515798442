"""Anatomical normality loss: eq. (3) of ViSD-Boost (Cao et al., ICCV 2025), phase 3.

For a *normal* anatomy j of sample i (y_ij = 0), level-4 tokens f_ij, encoder phi_E conditioned on
anatomy A_j, nearest code e_{j,k} of the anatomy's codebook and decoder phi_D::

    L = 1/(B*M) * sum_ij I[y_ij = 0] * ( ||f_ij - phi_D(e_jk)||^2 + beta * ||sg[e_jk] - phi_E(f_ij; A_j)||^2 )

Precondition: the caller passes normal anatomies only (:func:`select_normal`). The indicator of
eq. 3 cannot be applied after the forward, because the codebook EMA update inside the VQ-VAE's
forward uses every vector it is given; filtering first keeps abnormal anatomies out of the codebook.

Reductions: squared norms become means over the channels (MSE) and over the real tokens of all
instances, so the loss does not scale with C or L; eq. 3's 1/(B*M) normalisation over pairs is
kept up to that per-element mean. ``space="feature"`` (default) compares f with the de-normalised
reconstruction, as eq. 3 writes it; ``"normalized"`` compares in the min-max normalised space
(what the released ``data_variance`` suggests), which weights every instance equally.
"""

from __future__ import annotations

import torch

from ctvlp.models.vqvae import VQOutput, masked_mse
from ctvlp.precision import float32_compute

__all__ = ["select_normal", "normality_vq_loss"]


def select_normal(tokens: torch.Tensor, token_mask: torch.Tensor, anatomy: torch.Tensor,
                  abnormal: torch.Tensor):
    """Keep the normal anatomy instances (the precondition of :func:`normality_vq_loss`).

    Args:
        tokens: ``[N, L, C]`` level-4 tokens of N (sample, anatomy) instances.
        token_mask: ``[N, L]`` bool real tokens. anatomy: ``[N]`` int64 anatomy index.
        abnormal: ``[N]`` label of each instance (1 abnormal, 0 normal).

    Returns:
        (tokens, token_mask, anatomy) restricted to ``abnormal == 0`` (possibly N = 0).
    """
    n = tokens.shape[0]
    if token_mask.shape[0] != n or anatomy.shape != (n,) or abnormal.shape != (n,):
        raise ValueError(f"token_mask [N,L], anatomy [N], abnormal [N] must share N={n}, got "
                         f"{tuple(token_mask.shape)}, {tuple(anatomy.shape)}, {tuple(abnormal.shape)}")
    keep = abnormal == 0
    return tokens[keep], token_mask[keep], anatomy[keep]


@float32_compute  # the MSE terms in float32 (docs/DESIGN.md, Precision)
def normality_vq_loss(out: VQOutput, tokens: torch.Tensor, beta: float = 0.25,
                      space: str = "feature") -> dict[str, torch.Tensor]:
    """Eq. (3) from a VQ-VAE forward on normal instances.

    Args:
        out: :class:`ctvlp.models.vqvae.VQOutput` of ``vqvae(tokens, mask, anatomy)``.
        tokens: ``[N, L, C_tok]`` the input f (for ``space="feature"``).
        beta: commitment weight (``spec.model.vq.beta``).
        space: ``"feature"`` (eq. 3) or ``"normalized"``.

    Returns:
        ``{"recon": ..., "commitment": ..., "total": recon + beta * commitment}`` scalars.
    """
    if space == "feature":
        recon = masked_mse(out.recon, tokens, out.mask)
    elif space == "normalized":
        recon = masked_mse(out.recon_norm, out.target_norm, out.mask)
    else:
        raise ValueError(f"space must be 'feature' or 'normalized', got {space!r}")
    return {"recon": recon, "commitment": out.commitment, "total": recon + beta * out.commitment}

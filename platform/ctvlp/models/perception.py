"""Abnormality semantic perception, sec. 3.3.2 of ViSD-Boost (Cao et al., ICCV 2025), phase 4.

For anatomy j, the original tokens f_ij and their normality reconstruction q_ij (from the frozen
VQ-VAE) are concatenated and mapped by a per-anatomy MLP; the output f^_ij replaces f_ij before
the anatomy query pooling::

    f^_ij = W2_j . act(W1_j . [f_ij ; q_ij] + b1_j) + b2_j        W1_j: 2C -> C, W2_j: C -> C

``activation="gelu"`` (default): the paper's "multiple-layer perceptron". ``"none"``: the released
``res_projs1/res_projs2`` pair, two Linear layers with no nonlinearity in between (one affine map).
In the released model only the level-4 part of q differs from f (levels 1-3 pass the original
tokens as their own "reconstruction"); the caller builds ``recon`` accordingly.

Legend: M anatomies, C token channels, B batch, L tokens.

Precision (docs/DESIGN.md): float32 weights; the per-anatomy MLP computes in bf16 under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AbnormalityPerception"]


class AbnormalityPerception(nn.Module):
    """Per-anatomy two-layer MLP on concat(original, reconstruction), weights stored as [M, ...].

    Args:
        num_anatomies: M.
        channels: C, the token dim (``spec.model.token_dim``).
        activation: ``"gelu"`` (paper) or ``"none"`` (released; ``spec.model.perception_activation``).
    """

    def __init__(self, num_anatomies: int, channels: int, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in ("gelu", "none"):
            raise ValueError(f"activation must be 'gelu' or 'none', got {activation!r}")
        if num_anatomies < 1 or channels < 1:
            raise ValueError("num_anatomies and channels must be >= 1")
        self.activation = activation
        M, C = num_anatomies, channels
        self.w1 = nn.Parameter(torch.empty(M, 2 * C, C))  # [M, in, out]
        self.b1 = nn.Parameter(torch.empty(M, C))
        self.w2 = nn.Parameter(torch.empty(M, C, C))
        self.b2 = nn.Parameter(torch.empty(M, C))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default init, applied per anatomy (U(+-1/sqrt(fan_in)))."""
        for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h) if self.activation == "gelu" else h

    def forward_dense(self, orig: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Anatomy-major layout: orig, recon ``[B, M, L, C]`` -> ``[B, M, L, C]``, one einsum per
        layer over the [M, ...] weights (no gather of weights, no loop)."""
        if orig.shape != recon.shape or orig.dim() != 4 or orig.shape[1] != self.w1.shape[0]:
            raise ValueError(f"orig and recon must both be [B, M={self.w1.shape[0]}, L, C], got "
                             f"{tuple(orig.shape)} and {tuple(recon.shape)}")
        x = torch.cat([orig, recon], dim=-1)  # [B, M, L, 2C]
        h = self._act(torch.einsum("bmlc,mcd->bmld", x, self.w1) + self.b1[:, None, :])
        return torch.einsum("bmlc,mcd->bmld", h, self.w2) + self.b2[:, None, :]

    def forward(self, orig: torch.Tensor, recon: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        """Any token layout with an anatomy index per token (or per leading prefix).

        Args:
            orig, recon: ``[..., C]`` original and reconstructed tokens (same shape).
            anatomy: int64 of shape ``orig.shape[:k]`` for some k <= orig.dim()-1 (e.g. ``[N]`` for
                packed instances ``[N, L, C]``, or ``[N, L]`` per token); broadcast over the rest.

        Returns:
            ``[..., C]``. Tokens are sorted by anatomy and each anatomy's segment goes through its
            own weights (a loop over the <= M anatomies present, never over tokens or samples).
        """
        if orig.shape != recon.shape:
            raise ValueError(f"orig and recon shapes differ: {tuple(orig.shape)} vs {tuple(recon.shape)}")
        lead = orig.shape[:-1]
        if anatomy.dim() > len(lead) or tuple(anatomy.shape) != tuple(lead[: anatomy.dim()]):
            raise ValueError(f"anatomy shape {tuple(anatomy.shape)} must be a prefix of {tuple(lead)}")
        idx = anatomy.reshape(*anatomy.shape, *([1] * (len(lead) - anatomy.dim()))).expand(lead).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.w1.shape[0]):
            raise ValueError(f"anatomy indices must lie in [0, {self.w1.shape[0]})")
        x = torch.cat([orig, recon], dim=-1).reshape(-1, 2 * orig.shape[-1])  # [T, 2C]
        order = torch.argsort(idx, stable=True)
        counts = torch.bincount(idx, minlength=self.w1.shape[0]).tolist()
        outs = []
        for m, seg in enumerate(torch.split(x[order], counts)):
            if seg.shape[0]:
                h = self._act(seg @ self.w1[m] + self.b1[m])
                outs.append(h @ self.w2[m] + self.b2[m])
        y = torch.cat(outs) if outs else x.new_zeros(0, orig.shape[-1])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return y[inverse].view(*lead, orig.shape[-1])  # undo the sort

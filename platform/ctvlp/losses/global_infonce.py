"""Global image-report InfoNCE: CLIP ("Learning Transferable Visual Models From Natural Language
Supervision", Radford et al., ICML 2021, arXiv:2103.00020), the first, non-fine-grained row of
ViSD-Boost's Table 5 (one embedding per volume, one per whole report).

For the N samples of the global batch with image embeddings v_i and report embeddings t_k (both
L2-normalised) and S_ik = <v_i, t_k> / tau::

    L = 1/2 * ( -1/N sum_i log softmax_k(S_ik)[i]  +  -1/N sum_k log softmax_i(S_ik)[k] )

the symmetric cross-entropy of CLIP's pseudo-code (image-to-text rows and text-to-image columns,
identity targets), averaged over the two directions and the N samples.

* **Global batch.** Features of all ranks are gathered (:func:`ctvlp.dist.gather_with_grad`), so
  every sample's negatives are the reports of the whole global batch, as in eq. 1 of
  :mod:`ctvlp.losses.anatomy_infonce`; each rank computes the same global loss, and the gradient
  convention is the one documented in :mod:`ctvlp.dist`.
* **Validity.** ``valid[i] = False`` drops sample i as a row and as a candidate (e.g. a sample
  without any report text); N counts the valid samples.
* **Temperature.** ``logits = sim / tau`` with a learnable, clamped tau, as every loss of this
  package (CLIP's ``logit_scale = exp(t)`` is the same quantity parameterised in log space).
* **Hard targets only.** Identical reports of two samples (all-normal reports repeat) are still
  negatives of each other, as in CLIP; the anatomy-wise losses are where the soft targets live.

Shapes: img, txt ``[B, E]`` (local shard), valid ``[B]`` bool. Returns a float32 scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctvlp import dist
from ctvlp.precision import float32_compute

__all__ = ["global_infonce_loss"]


@float32_compute  # logits / tau and the cross-entropy in float32 (docs/DESIGN.md, Precision)
def global_infonce_loss(img: torch.Tensor, txt: torch.Tensor, temperature: torch.Tensor | float,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the global batch (module docstring).

    Args:
        img: ``[B, E]`` whole-volume embeddings, L2-normalised (local shard).
        txt: ``[B, E]`` whole-report embeddings, L2-normalised (local shard).
        temperature: scalar tau, ``logits = <img, txt> / tau``.
        valid: ``[B]`` bool, sample takes part (default: all).

    Returns:
        Scalar float32 loss; zero (attached to the graph) when no sample is valid.
    """
    if img.dim() != 2 or img.shape != txt.shape:
        raise ValueError(f"img and txt must both be [B, E], got {tuple(img.shape)} and {tuple(txt.shape)}")
    if valid is None:
        valid = torch.ones(img.shape[0], dtype=torch.bool, device=img.device)
    if valid.shape != img.shape[:1]:
        raise ValueError(f"valid must be [B]={tuple(img.shape[:1])}, got {tuple(valid.shape)}")
    g_img = dist.gather_with_grad(img).float()  # [N, E]
    g_txt = dist.gather_with_grad(txt).float()
    keep = dist.gather_with_grad(valid.bool())  # [N]
    logits = g_img @ g_txt.t() / temperature  # [N(img), N(txt)]
    cand = keep[:, None] & keep[None, :]
    # lowest finite value, not -inf: a row without candidates stays finite (it is masked below)
    neg = torch.finfo(logits.dtype).min
    target = torch.arange(logits.shape[0], device=logits.device)
    i2t = F.cross_entropy(logits.masked_fill(~cand, neg), target, reduction="none")  # [N]
    t2i = F.cross_entropy(logits.t().masked_fill(~cand, neg), target, reduction="none")
    per_sample = 0.5 * (i2t + t2i) * keep
    return per_sample.sum() / keep.sum().clamp_min(1)

"""Anatomy-wise image-report InfoNCE: eq. (1) of "Boosting Vision Semantic Density with Anatomy
Normality Modeling for Medical Vision-language Pre-training" (ViSD-Boost, Cao et al., ICCV 2025),
with the options of fVLM's released alignment loss (``lavis/models/blip_models/blip_pretrain.py``).

Eq. (1), for anatomy j with image queries Q^I and report queries Q^R (both L2-normalised)::

    L = -1/(B*M) * sum_i sum_j log( exp(<Q^I_ij, Q^R_ij>/tau) / sum_k exp(<Q^I_ij, Q^R_kj>/tau) )

What this implementation adds, each as the paper or fVLM's released code does it:

* **Per-anatomy global batch.** For anatomy j only the samples in which j is intact (present and
  not cut by the crop, ``valid[i, j]``) take part, as rows and as candidates k; features of all
  ranks are gathered (:func:`ctvlp.dist.gather_with_grad`) so k runs over the global batch.
* **Symmetric.** Eq. (1) writes image-to-text; fVLM (and the issue) use ``(L_i2t + L_t2i) / 2``.
* **Targets.** ``"hard"``: identity (eq. 1). ``"soft"``: fVLM's false-negative reduction: target
  t_ik = 1 if i == k, or both reports of anatomy j are normal, or both texts are identical
  (``text_key`` equal); rows normalised to sum 1; loss is the soft cross-entropy.
* **Reduction.** ``"pairs"`` (default, eq. 1): mean over all intact (sample, anatomy) pairs of the
  global batch. ``"anatomy_sum"`` (fVLM ``blip_pretrain.py:273-285``): per anatomy the mean over
  its intact samples, then *summed* over anatomies.
* **fVLM's skip rule** (``skip_without_abnormal``): an anatomy is left out of the step when its
  global intact set holds no abnormal sample (fVLM ``blip_pretrain.py:177-182``). Off by default.

The temperature follows BLIP/ViSD: ``logits = sim / tau`` with ``tau`` a (learnable, clamped by
the caller) scalar. Logits are computed for all anatomies at once as ``[M, B, B]`` and masked, so
there is no loop over anatomies or samples.

Every rank computes the same global loss; see :mod:`ctvlp.dist` for the gradient convention.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ctvlp import dist
from ctvlp.precision import float32_compute

__all__ = ["anatomy_infonce_loss", "text_identity_keys", "check_pair_inputs"]

Targets = Literal["hard", "soft"]
Reduction = Literal["pairs", "anatomy_sum"]

_HASH_PRIME = 2_147_483_647  # 2**31 - 1: products of two residues fit in int64
_HASH_BASES = (1_000_003, 998_244_353)


def text_identity_keys(text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Hash each anatomy text to one int64 so that "identical text" can be tested across ranks.

    Token ids cannot be gathered directly because dynamic padding gives every rank its own T.

    Args:
        text_ids: ``[B, M, T]`` int64 token ids.
        text_mask: ``[B, M, T]`` attention mask (1 = real token).

    Returns:
        ``[B, M]`` int64: two polynomial hashes modulo 2**31-1 packed into 62 bits; equal texts
        give equal keys, different texts collide with probability ~2**-62.
    """
    if text_ids.shape != text_mask.shape or text_ids.dim() != 3:
        raise ValueError(f"text_ids and text_mask must both be [B,M,T], got "
                         f"{tuple(text_ids.shape)} and {tuple(text_mask.shape)}")
    ids = (text_ids.long() + 1) * (text_mask != 0)  # +1 so token 0 differs from padding
    t = torch.arange(ids.shape[-1], device=ids.device)
    keys = []
    for base in _HASH_BASES:
        # base**t mod p, vectorised over T with Python ints (exact, T is small)
        powers = torch.tensor([pow(base, int(k), _HASH_PRIME) for k in t], device=ids.device)
        keys.append(((ids % _HASH_PRIME) * powers % _HASH_PRIME).sum(-1) % _HASH_PRIME)
    return keys[0] * (_HASH_PRIME + 1) + keys[1]


def check_pair_inputs(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor,
                      abnormal: torch.Tensor) -> None:
    """Raise ValueError unless a, b are ``[B, M, E]`` and valid, abnormal are ``[B, M]``."""
    if a.dim() != 3 or a.shape != b.shape:
        raise ValueError(f"features must both be [B,M,E], got {tuple(a.shape)} and {tuple(b.shape)}")
    for name, t in (("valid", valid), ("abnormal", abnormal)):
        if t.shape != a.shape[:2]:
            raise ValueError(f"{name} must be [B,M]={tuple(a.shape[:2])}, got {tuple(t.shape)}")


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Row-wise ``-sum_k target_k * log_softmax(logits)_k`` over allowed candidates.

    logits, target: ``[M, B, B]``; cand: ``[M, B, B]`` bool (False = excluded candidate).
    Returns ``[M, B]``. Excluded logits get the dtype's lowest finite value, not -inf, so a row
    without candidates gives 0 instead of NaN in the value and the gradient.
    """
    neg = torch.finfo(logits.dtype).min
    logp = F.log_softmax(logits.masked_fill(~cand, neg), dim=-1)
    return -(target * logp.masked_fill(~cand, 0.0)).sum(-1)


def _targets(valid: torch.Tensor, abnormal: torch.Tensor, text_key: torch.Tensor | None,
             kind: str) -> torch.Tensor:
    """``[M, B, B]`` row-normalised targets restricted to intact pairs (global tensors, [B, M] in)."""
    v = valid.t()  # [M, B]
    pair = v[:, :, None] & v[:, None, :]
    eye = torch.eye(v.shape[1], dtype=torch.bool, device=v.device)[None]
    pos = eye & pair
    if kind == "soft":
        normal = (abnormal.t() == 0) & v
        pos = pos | (normal[:, :, None] & normal[:, None, :])
        if text_key is not None:
            key = text_key.t()
            pos = pos | ((key[:, :, None] == key[:, None, :]) & pair)
    t = pos.float()
    return t / t.sum(-1, keepdim=True).clamp_min(1.0)


@float32_compute  # logits / tau and the cross-entropy in float32 (docs/DESIGN.md, Precision)
def anatomy_infonce_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    valid: torch.Tensor,
    abnormal: torch.Tensor,
    temperature: torch.Tensor | float,
    text_key: torch.Tensor | None = None,
    targets: Targets = "hard",
    reduction: Reduction = "pairs",
    skip_without_abnormal: bool = False,
) -> torch.Tensor:
    """Eq. (1): symmetric anatomy-wise image-report InfoNCE over the global batch.

    Args:
        img: ``[B, M, E]`` image anatomy embeddings Q^I, L2-normalised (local shard).
        txt: ``[B, M, E]`` report anatomy embeddings Q^R, L2-normalised (local shard).
        valid: ``[B, M]`` bool, anatomy intact in the crop and has a text.
        abnormal: ``[B, M]`` int/bool, 1 = the anatomy's report is abnormal.
        temperature: scalar tau; ``logits = <Q^I, Q^R> / tau``.
        text_key: ``[B, M]`` int64 text identity (:func:`text_identity_keys`); soft targets only.
        targets: ``"hard"`` (eq. 1) or ``"soft"`` (fVLM).
        reduction: ``"pairs"`` (eq. 1) or ``"anatomy_sum"`` (fVLM).
        skip_without_abnormal: fVLM's rule, drop anatomies with no abnormal intact sample.

    Returns:
        Scalar loss, float32. Zero (still attached to the graph) when no pair is intact.
    """
    check_pair_inputs(img, txt, valid, abnormal)
    if targets not in ("hard", "soft") or reduction not in ("pairs", "anatomy_sum"):
        raise ValueError(f"targets must be hard|soft and reduction pairs|anatomy_sum, "
                         f"got {targets!r}, {reduction!r}")
    g_img = dist.gather_with_grad(img).float()  # [Bg, M, E]
    g_txt = dist.gather_with_grad(txt).float()
    g_valid = dist.gather_with_grad(valid.bool())  # [Bg, M]
    g_abn = dist.gather_with_grad(abnormal.long())
    g_key = dist.gather_with_grad(text_key.long()) if (targets == "soft" and text_key is not None) else None

    if skip_without_abnormal:  # anatomy j kept only if some intact sample of j is abnormal
        has_abn = ((g_abn != 0) & g_valid).any(dim=0, keepdim=True)  # [1, M]
        g_valid = g_valid & has_abn
    logits = torch.einsum("bme,kme->mbk", g_img, g_txt) / temperature  # [M, Bg(img), Bg(txt)]
    v = g_valid.t()  # [M, Bg]
    cand = v[:, :, None] & v[:, None, :]
    # the positive sets are symmetric (i~k iff k~i), so the row-normalised targets of the text
    # rows (t2i) are the same matrix as those of the image rows (i2t); cand is symmetric too
    tgt = _targets(g_valid, g_abn, g_key, targets)  # [M, Bg, Bg]
    i2t = _soft_cross_entropy(logits, tgt, cand)  # [M, Bg]
    t2i = _soft_cross_entropy(logits.transpose(1, 2), tgt, cand)
    per_pair = 0.5 * (i2t + t2i) * v  # [M, Bg], zero on non-intact pairs

    if reduction == "pairs":
        return per_pair.sum() / v.sum().clamp_min(1)
    per_anatomy = per_pair.sum(-1) / v.sum(-1).clamp_min(1)  # [M]
    return per_anatomy.sum()

"""Vision semantic density boosting at inference and phase-4 training (ViSD-Boost sec. 3.3.2).

``boosted_forward`` runs the vision encoder, reconstructs each anatomy's level-4 tokens with the
frozen normality VQ-VAE, maps concat(original, reconstruction) through the per-anatomy perception
MLP and pools each anatomy over its level 1-3 tokens plus *its own* boosted level-4 tokens.

Why the extended key set: the boosted tokens are anatomy-specific (anatomy j's MLP), so they
cannot be shared keys. We append them as ``M x L4`` extra keys, each visible to its anatomy
only (a block-diagonal flag), and reuse the batched masked pooling unchanged, level by level
(``AnatomyQueryPooling`` takes a list of levels and never concatenates their tokens). At the paper's
size (L4 = 576, M = 36) that adds ~20K keys to ~360K shared ones, versus padding every
anatomy's full token set (tens of GB). Levels 1-3 enter unchanged: in the released model their
"reconstruction" is the original token, and the VQ-VAE models level 4 only.

The VQ-VAE is frozen and run without autograd: gradients of the alignment loss reach the
encoder through the original tokens and the perception MLP, not through the reconstruction.

Legend: B batch, M anatomies, L4 level-4 tokens, C token dim, E embed dim, N instances.

Precision (docs/DESIGN.md): the frozen VQ-VAE reconstruction runs without autograd (its quantiser
in float32); the perception MLP and pooling compute in bf16 under autocast.
"""

from __future__ import annotations

from typing import Any

import torch

from ctvlp.models.perception import AbnormalityPerception
from ctvlp.models.resnet3d import STAGE_STRIDES
from ctvlp.models.tokens import anatomy_token_flags, intact_anatomies
from ctvlp.models.visd import VisionModel
from ctvlp.models.vqvae import NormalityVQVAE


def encode_tokens(vision: VisionModel, image: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    """Level tokens, flags and intactness without pooling.

    Returns {"tokens": list [B, L_s, C], "flags": list bool [B, M, L_s], "intact": [B, M]}.
    """
    tokens, _ = vision.encode(image)
    flags = anatomy_token_flags(mask, vision.num_anatomies, STAGE_STRIDES)
    return {"tokens": tokens, "flags": flags, "intact": intact_anatomies(mask, vision.num_anatomies)}


def level4_instances(tok4: torch.Tensor, flags4: torch.Tensor, select: torch.Tensor):
    """Per-(sample, anatomy) sets of level-4 tokens, padded to L4.

    Args:
        tok4: [B, L4, C]; flags4: [B, M, L4] bool; select: [B, M] bool instances to keep.

    Returns:
        tokens [N, L4, C], token_mask [N, L4] bool, anatomy [N] int64, sample [N] int64
        (N = select.sum(); rows of an instance without any token are dropped from ``select``).
    """
    select = select & flags4.any(-1)
    b, m = select.shape
    sample, anatomy = select.nonzero(as_tuple=True)
    return tok4[sample], flags4[sample, anatomy], anatomy, sample


@torch.no_grad()
def reconstruct_level4(vqvae: NormalityVQVAE, tok4: torch.Tensor, flags4: torch.Tensor) -> torch.Tensor:
    """Frozen VQ-VAE reconstruction of every (sample, anatomy) level-4 set: [B, M, L4, C]."""
    b, m, l4 = flags4.shape
    out = tok4.new_zeros(b, m, l4, tok4.shape[-1])
    present = flags4.any(-1)
    if present.any():
        t, tm, a, s = level4_instances(tok4, flags4, present)
        recon = vqvae(t, tm, a, update_codebook=False).recon  # [N, L4, C]
        out[s, a] = recon.to(out.dtype) * tm[..., None]
    return out


def block_diagonal_flags(flags4: torch.Tensor) -> torch.Tensor:
    """[B, M, L4] -> [B, M, M*L4]: query m sees key (m', l) iff m == m' and flags4[b, m', l]."""
    b, m, l4 = flags4.shape
    eye = torch.eye(m, dtype=torch.bool, device=flags4.device)
    return (eye[None, :, :, None] & flags4[:, None, :, :]).reshape(b, m, m * l4)


def boosted_forward(vision: VisionModel, vqvae: NormalityVQVAE, perception: AbnormalityPerception,
                    image: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    """Anatomy embeddings with boosted level-4 tokens.

    Args:
        image: [B, 1, D, H, W]; mask: [B, D, H, W] grouped ids.

    Returns:
        {"embeds": [B, M, E], "valid": [B, M], "intact": [B, M], "boosted4": [B, M, L4, C],
         "orig4": [B, L4, C], "flags4": [B, M, L4]}.
    """
    enc = encode_tokens(vision, image, mask)
    tokens, flags = enc["tokens"], enc["flags"]
    tok4, flags4 = tokens[-1], flags[-1]
    b, m, l4 = flags4.shape
    recon = reconstruct_level4(vqvae, tok4.detach(), flags4)  # [B, M, L4, C]
    orig = tok4[:, None].expand(b, m, l4, tok4.shape[-1])
    boosted = perception.forward_dense(orig, recon.to(orig.dtype))  # [B, M, L4, C]
    # Levels pooled as a list, as phase 2 does: concatenating the level 1-3 tokens with the boosted
    # keys would copy every token of the crop once more (~1e9 elements at B = 12, 96x256x384).
    keys = [*tokens[:-1], boosted.reshape(b, m * l4, -1)]
    key_flags = [*flags[:-1], block_diagonal_flags(flags4)]
    pooled = vision.pooling(keys, key_flags)
    return {"embeds": pooled["embeds"], "valid": pooled["valid"], "intact": enc["intact"],
            "boosted4": boosted, "orig4": tok4, "flags4": flags4}

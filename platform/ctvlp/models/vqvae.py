"""Anatomical normality VQ-VAE in latent space: eq. (3) and sec. 3.3.1 of ViSD-Boost (Cao et al.,
ICCV 2025), with the VQ-VAE of van den Oord et al. 2017 (arXiv:1711.00937, EMA codebook appendix).

Legend: N anatomy instances (sample x anatomy pairs), L level-4 tokens per instance (padded,
``mask`` marks real ones), C_tok token channels (256), D transformer width (768), C code dim
(paper 1024, released 768), M anatomies, K codes per anatomy (100).

Forward path (released ``VISDBOOST`` lines 368-383 unless noted):
1. per-instance min-max normalisation of the real tokens to [-0.5, 0.5];
2. Linear(C_tok->512) -> Linear(512->D) (no activation, as released);
3. prepend the anatomy condition token: ``nn.Embedding(M, D)`` (paper: "a condition token for each
   anatomy"; default) or the released ``Linear(1->D)`` on the float index (``condition="linear"``,
   a 1-D family a*j+b);
4. pre-LN transformer (depth 2, 16 heads x 64, MLP 2048 GELU, dropout 0.1, final LN), no
   positional embedding (a set model), key padding mask; drop the condition output;
5. Linear(D->C) when D != C; EMA vector quantiser with a codebook buffer [M, K, C]: nearest code
   within the anatomy's own K (eq. 3's e_{j,k}; default) or over all M*K (``search="global"``, as
   released); straight-through estimator; commitment MSE(z, sg[e]);
6. Linear(C->D) when D != C, decoder transformer (no condition token), Linear(D->512) ->
   Linear(512->C_tok), de-normalised with the instance's min/max.

Hand-written instead of a library because (a) vector-quantize-pytorch / MONAI's ``EMAQuantizer``
hold one codebook (or one per head), not one selected per instance by anatomy, and their
cross-rank sync differs from the explicit all-reduce below; (b) ``nn.TransformerEncoderLayer``
ties the head width to D/heads (cannot express 16 x 64 on D=768) and MONAI's ``SABlock`` applies
attention dropout even in eval mode on its SDPA path. The attention uses
``F.scaled_dot_product_attention``.

Precision (docs/DESIGN.md): float32 weights; ``normalize`` works in float32; the transformers and
projections compute in bf16 under autocast; the quantiser (codebook search, EMA, commitment) and
the reconstruction MSE run in float32 (``ctvlp.precision.float32_compute``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctvlp.models.vq_codebook import AnatomyEMAQuantizer, VQConfig

__all__ = ["VQConfig", "VQOutput", "NormalityVQVAE", "TokenTransformer", "build_vqvae",
           "masked_mse"]


class _Attention(nn.Module):
    """Multi-head self-attention, inner width heads*dim_head (may differ from D)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x: [N, L, D]; key_mask: [N, L] bool (True = real token). Returns [N, L, D]."""
        n, L, _ = x.shape
        q, k, v = self.to_qkv(x).view(n, L, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)  # 3x[N,h,L,dh]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(n, L, self.heads * self.dim_head))


class TokenTransformer(nn.Module):
    """Pre-LN transformer encoder over a padded token set, with a final LayerNorm.

    Args:
        dim: width D. depth: number of blocks. heads, dim_head: attention heads and head width.
        mlp_dim: hidden width of the GELU MLP. dropout: attention-output and MLP dropout.
    """

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(mlp_dim, dim), nn.Dropout(dropout))
            self.blocks.append(nn.ModuleList([nn.LayerNorm(dim), _Attention(dim, heads, dim_head, dropout),
                                              nn.LayerNorm(dim), mlp]))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x: [N, L, D]; key_mask: [N, L] bool. Returns [N, L, D]."""
        for norm1, attn, norm2, mlp in self.blocks:
            x = x + attn(norm1(x), key_mask)
            x = x + mlp(norm2(x))
        return self.norm(x)


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens. a, b: [N, L, C]; mask: [N, L] bool.
    Returns a scalar (0, attached to the graph, when no token is real)."""
    sq = (a.float() - b.float()).pow(2).mean(-1) * mask
    return sq.sum() / mask.sum().clamp_min(1)


@dataclass
class VQOutput:
    """What :meth:`NormalityVQVAE.forward` returns (shapes per the module legend)."""

    recon: torch.Tensor  # [N, L, C_tok] reconstruction in the input's scale (phi_D(e), de-normalised)
    recon_norm: torch.Tensor  # [N, L, C_tok] reconstruction in the normalised space
    target_norm: torch.Tensor  # [N, L, C_tok] min-max normalised input
    z: torch.Tensor  # [N, L, C] encoder output phi_E(f; A_j)
    quantized: torch.Tensor  # [N, L, C] e (straight-through: value e, gradient to z)
    indices: torch.Tensor  # [N, L] int64 code index (within the anatomy's K, or of M*K if global)
    commitment: torch.Tensor  # scalar MSE(z, sg[e]) over real tokens (beta not applied)
    mask: torch.Tensor  # [N, L] bool real tokens
    lo: torch.Tensor  # [N] per-instance min
    scale: torch.Tensor  # [N] per-instance max - min


class NormalityVQVAE(nn.Module):
    """The anatomy-conditioned transformer VQ-VAE over level-4 tokens (see module docstring).

    Training mode updates the codebook by EMA from every real token passed in (all ranks must call
    ``forward`` together: the statistics are all-reduced). Pass *normal* anatomies only
    (:func:`ctvlp.losses.normality_vq.select_normal`).
    """

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.in_proj = nn.Sequential(nn.Linear(cfg.token_dim, cfg.hidden_dim), nn.Linear(cfg.hidden_dim, D))
        self.condition = (nn.Embedding(cfg.num_anatomies, D) if cfg.condition == "embedding"
                          else nn.Linear(1, D))
        tf = (D, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_dim, cfg.dropout)
        self.encoder = TokenTransformer(*tf)
        self.to_code = nn.Linear(D, cfg.code_dim) if D != cfg.code_dim else nn.Identity()
        self.quantizer = AnatomyEMAQuantizer(cfg)
        self.from_code = nn.Linear(cfg.code_dim, D) if D != cfg.code_dim else nn.Identity()
        self.decoder = TokenTransformer(*tf)
        self.out_proj = nn.Sequential(nn.Linear(D, cfg.hidden_dim), nn.Linear(cfg.hidden_dim, cfg.token_dim))

    def _check(self, tokens: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.cfg.token_dim:
            raise ValueError(f"tokens must be [N, L, {self.cfg.token_dim}], got {tuple(tokens.shape)}")
        if mask.shape != tokens.shape[:2] or anatomy.shape != tokens.shape[:1]:
            raise ValueError(f"mask must be [N, L]={tuple(tokens.shape[:2])} and anatomy [N], got "
                             f"{tuple(mask.shape)} and {tuple(anatomy.shape)}")
        mask = mask.bool()
        if tokens.shape[0] and not bool(mask.any(1).all()):
            raise ValueError("every instance needs at least one real token (mask row all False)")
        if tokens.shape[0] and not (0 <= int(anatomy.min()) and int(anatomy.max()) < self.cfg.num_anatomies):
            raise ValueError(f"anatomy indices must lie in [0, {self.cfg.num_anatomies})")
        return mask

    @staticmethod
    def normalize(tokens: torch.Tensor, mask: torch.Tensor):
        """Min-max to [-0.5, 0.5] per instance over its real tokens; pads set to 0.
        Returns (x_norm [N,L,C_tok] float32, lo [N], scale [N])."""
        t = tokens.float()
        m = mask[..., None]
        lo = t.masked_fill(~m, float("inf")).amin(dim=(1, 2))
        hi = t.masked_fill(~m, float("-inf")).amax(dim=(1, 2))
        scale = (hi - lo).clamp_min(1e-6)  # a constant instance maps to -0.5 instead of NaN
        x = ((t - lo[:, None, None]) / scale[:, None, None] - 0.5) * m
        return x, lo, scale

    def encode(self, x_norm: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        """phi_E: normalised tokens [N, L, C_tok] -> z [N, L, C]."""
        h = self.in_proj(x_norm)  # [N, L, D]
        if self.cfg.condition == "embedding":
            cond = self.condition(anatomy)
        else:
            cond = self.condition(anatomy.to(h.dtype)[:, None])
        h = torch.cat([cond[:, None, :].to(h.dtype), h], dim=1)  # [N, 1+L, D]
        key_mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        h = self.encoder(h, key_mask)[:, 1:]  # drop the condition output
        return self.to_code(h)

    def decode(self, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """phi_D: codes [N, L, C] -> reconstruction in the normalised space [N, L, C_tok]."""
        return self.out_proj(self.decoder(self.from_code(codes), mask))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor,
                update_codebook: bool = True) -> VQOutput:
        """tokens [N, L, C_tok], mask [N, L] bool, anatomy [N] int64 -> :class:`VQOutput`.
        The codebook EMA runs only when ``self.training and update_codebook``."""
        mask = self._check(tokens, mask, anatomy)
        x, lo, scale = self.normalize(tokens, mask)
        z = self.encode(x, mask, anatomy)
        zq, flat, commit = self.quantizer(z, mask, anatomy, update=self.training and update_codebook)
        recon_norm = self.decode(zq, mask)
        recon = (recon_norm.float() + 0.5) * scale[:, None, None] + lo[:, None, None]
        return VQOutput(recon=recon.to(tokens.dtype), recon_norm=recon_norm, target_norm=x, z=z,
                        quantized=zq, indices=self.quantizer.to_public(flat, anatomy),
                        commitment=commit, mask=mask, lo=lo, scale=scale)

    @torch.no_grad()
    def encode_indices(self, tokens: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        """Code indices [N, L] of the tokens (no codebook update)."""
        mask = self._check(tokens, mask, anatomy)
        x, _, _ = self.normalize(tokens, mask)
        flat = self.quantizer.nearest(self.encode(x, mask, anatomy), anatomy)
        return self.quantizer.to_public(flat, anatomy)

    def indices_to_codes(self, indices: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        """Codebook vectors [N, L, C] of public indices [N, L]."""
        return self.quantizer.lookup(self.quantizer.to_flat(indices, anatomy))

    def decode_indices(self, indices: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor,
                       lo: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Decode chosen codes: [N, L] -> [N, L, C_tok], normalised space unless lo/scale [N] given."""
        out = self.decode(self.indices_to_codes(indices, anatomy), mask.bool())
        if lo is not None and scale is not None:
            out = (out.float() + 0.5) * scale[:, None, None] + lo[:, None, None]
        return out

    @torch.no_grad()
    def anomaly_score(self, tokens: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        """Per-instance reconstruction error [N]: mean over real tokens of the squared error in the
        normalised space (scale-free across instances; the phase-3 AUC objective). No EMA update."""
        out = self.forward(tokens, mask, anatomy, update_codebook=False)
        sq = (out.recon_norm.float() - out.target_norm).pow(2).mean(-1) * out.mask
        return sq.sum(1) / out.mask.sum(1).clamp_min(1)


def build_vqvae(model_spec, num_anatomies: int) -> NormalityVQVAE:
    """Build from ``spec.model`` (``token_dim`` and ``vq.*``, see DESIGN.md) and M.

    Fields not yet in the spec (``vq.condition``, ``vq.dropout``, ``vq.hidden_dim``,
    ``vq.ema_bias_correction``, ``vq.dead_code_threshold``) fall back to :class:`VQConfig`'s
    defaults when absent.
    """
    vq = model_spec.vq
    names = ("codebook_size", "code_dim", "dim", "depth", "heads", "dim_head", "mlp_dim", "beta",
             "decay", "eps", "search", "condition", "dropout", "hidden_dim", "ema_bias_correction",
             "dead_code_threshold")
    kwargs = {n: getattr(vq, n) for n in names if hasattr(vq, n)}
    return NormalityVQVAE(VQConfig(token_dim=model_spec.token_dim, num_anatomies=num_anatomies, **kwargs))

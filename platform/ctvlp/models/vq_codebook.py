"""Per-anatomy EMA codebook of the normality VQ-VAE (ViSD-Boost eq. 3; EMA update of
van den Oord et al. 2017, arXiv:1711.00937, appendix A.1).

Legend: M anatomies, K codes per anatomy, C code dim, N instances, L tokens, V real vectors.

EMA update, per code (m, k), from the V real vectors of the step assigned to it::

    n_mk <- d * n_mk + (1 - d) * count_mk            (counts)
    s_mk <- d * s_mk + (1 - d) * sum of assigned z   (sums)
    e_mk  = s^_mk / smooth(n^)_mk,  smooth(n)_k = (n_k + eps) / (sum n + K eps) * sum n   (Laplace)

* ``ema_bias_correction=True`` (default, as released ``model.py:16-42``): n and s start at 0 and
  ``x^ = x / (1 - d^t)`` (Adam-style), t = number of updates of that anatomy. A code unused so far
  then sits at 0 (0 / smoothed count).
* ``False``: the standard form (Sonnet / lucidrains): n starts at 1 and s at the initial code (one
  pseudo-observation at the initial point), x^ = x; unused codes stay where they were.
* ``search="anatomy"``: only anatomies with at least one vector in the *global* step are updated
  (a never-seen anatomy would otherwise decay to 0/0), smoothing within the anatomy's K.
  ``search="global"``: every code is updated each step and smoothed over all M*K, as released.
* Counts and sums are all-reduced over ranks (one ``all_reduce`` of a [M*K, 1+C] tensor) before
  the update, so every rank holds the same codebook; DeepSpeed does not sync buffers.
* Optional dead-code restart (``dead_code_threshold > 0``, off by default, not in the release):
  a code of an updated anatomy whose smoothed count is below the threshold is replaced by a
  random vector of that anatomy from the step, the same vector on every rank.

Precision (docs/DESIGN.md): the codebook and its EMA statistics are float32 buffers and every
computation here runs outside autocast in float32 (``float32_compute``): bf16 distances would
pick wrong codes and bf16 EMA sums would stall.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctvlp import dist
from ctvlp.precision import float32_compute

__all__ = ["VQConfig", "AnatomyEMAQuantizer", "usage_counts", "perplexity"]


@dataclass(frozen=True)
class VQConfig:
    """Normality VQ-VAE configuration (``spec.model.vq.*`` plus ``token_dim`` and M).

    Args:
        token_dim: C_tok, channels of the input tokens (``spec.model.token_dim``, 256).
        num_anatomies: M.
        codebook_size: K codes per anatomy (100).
        code_dim: C (paper 1024; released 768).
        dim, depth, heads, dim_head, mlp_dim, dropout: transformer (768, 2, 16, 64, 2048, 0.1).
        hidden_dim: width of the two-linear input/output projections (512, as released).
        beta: commitment weight (0.25). decay: EMA decay (0.99). eps: Laplace smoothing (1e-5).
        search: ``"anatomy"`` (eq. 3, default) or ``"global"`` (released).
        condition: ``"embedding"`` (default) or ``"linear"`` (released Linear(1->D) on the index).
        ema_bias_correction: released bias-corrected EMA (True) or the standard form.
        dead_code_threshold: restart codes whose smoothed count falls below it (0 = never).
    """

    token_dim: int
    num_anatomies: int
    codebook_size: int = 100
    code_dim: int = 1024
    dim: int = 768
    depth: int = 2
    heads: int = 16
    dim_head: int = 64
    mlp_dim: int = 2048
    dropout: float = 0.1
    hidden_dim: int = 512
    beta: float = 0.25
    decay: float = 0.99
    eps: float = 1e-5
    search: str = "anatomy"
    condition: str = "embedding"
    ema_bias_correction: bool = True
    dead_code_threshold: float = 0.0

    def __post_init__(self) -> None:
        for name in ("token_dim", "num_anatomies", "codebook_size", "code_dim", "dim", "depth",
                     "heads", "dim_head", "mlp_dim", "hidden_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"vq {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"vq decay must be in [0, 1), got {self.decay}")
        if self.eps < 0 or self.beta < 0 or not 0.0 <= self.dropout < 1.0 or self.dead_code_threshold < 0:
            raise ValueError("vq eps, beta, dead_code_threshold must be >= 0 and dropout in [0, 1)")
        if self.search not in ("anatomy", "global"):
            raise ValueError(f"vq search must be 'anatomy' or 'global', got {self.search!r}")
        if self.condition not in ("embedding", "linear"):
            raise ValueError(f"vq condition must be 'embedding' or 'linear', got {self.condition!r}")


def usage_counts(flat: torch.Tensor, mask: torch.Tensor, num_anatomies: int, k: int) -> torch.Tensor:
    """How often each code was chosen: flat indices [N, L] (into M*K), mask [N, L] -> [M, K] float."""
    counts = torch.bincount(flat[mask.bool()].flatten(), minlength=num_anatomies * k)
    return counts.float().view(num_anatomies, k)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of each row of ``counts`` [M, K] -> [M]; K means uniform use, 1 one code,
    0 for a row without counts."""
    n = counts.sum(-1, keepdim=True)
    p = counts / n.clamp_min(1e-12)
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return torch.where(n.squeeze(-1) > 0, ent.exp(), torch.zeros_like(ent))


class AnatomyEMAQuantizer(nn.Module):
    """Nearest-code quantiser with an EMA-updated codebook buffer ``codebook`` [M, K, C]."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        M, K, C = cfg.num_anatomies, cfg.codebook_size, cfg.code_dim
        init = torch.empty(M * K, C)
        nn.init.xavier_uniform_(init)  # as released (model.py:66-71)
        self.register_buffer("codebook", init.view(M, K, C).clone())
        if cfg.ema_bias_correction:
            self.register_buffer("ema_count", torch.zeros(M, K))
            self.register_buffer("ema_sum", torch.zeros(M, K, C))
        else:
            self.register_buffer("ema_count", torch.ones(M, K))
            self.register_buffer("ema_sum", init.view(M, K, C).clone())
        self.register_buffer("num_updates", torch.zeros(M, dtype=torch.long))

    # -- index conventions: "flat" indexes the M*K rows; "public" is within the anatomy's K
    #    (search="anatomy") or the flat index itself (search="global")
    def to_public(self, flat: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        if self.cfg.search == "global":
            return flat
        return flat - anatomy[:, None] * self.cfg.codebook_size

    def to_flat(self, public: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        if self.cfg.search == "global":
            return public
        return public + anatomy[:, None] * self.cfg.codebook_size

    def lookup(self, flat: torch.Tensor) -> torch.Tensor:
        """Codes of flat indices [N, L] -> [N, L, C] float32."""
        return self.codebook.view(-1, self.cfg.code_dim)[flat]

    @torch.no_grad()
    @float32_compute  # distances to the codes in float32: bf16 would pick wrong codes
    def nearest(self, z: torch.Tensor, anatomy: torch.Tensor) -> torch.Tensor:
        """Flat index [N, L] of the nearest code (L2) to each z [N, L, C]."""
        z = z.float()
        K = self.cfg.codebook_size
        if self.cfg.search == "anatomy":
            e = self.codebook[anatomy]  # [N, K, C]: only the anatomy's own codes
            d = (e.pow(2).sum(-1)[:, None, :] - 2 * torch.einsum("nlc,nkc->nlk", z, e))  # [N, L, K]
            return d.argmin(-1) + anatomy[:, None] * K
        e = self.codebook.view(-1, self.cfg.code_dim)  # [M*K, C]
        d = e.pow(2).sum(-1) - 2 * torch.einsum("nlc,kc->nlk", z, e)  # [N, L, M*K]
        return d.argmin(-1)

    @float32_compute  # codebook search, EMA statistics and commitment in float32
    def forward(self, z: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor, update: bool):
        """Quantise z [N, L, C] (mask [N, L] bool, anatomy [N]).

        Returns (zq [N, L, C] straight-through, flat indices [N, L], commitment MSE(z, sg[e]) over
        real tokens). The commitment uses the codes *before* this step's EMA update, as released.
        """
        flat = self.nearest(z.detach(), anatomy)
        e = self.lookup(flat)  # pre-update codes, no grad (buffer)
        if update:
            self.update_codebook(z.detach(), flat, mask, anatomy)
        sq = (z.float() - e).pow(2).mean(-1) * mask
        commit = sq.sum() / mask.sum().clamp_min(1)
        zq = z + (e.to(z.dtype) - z).detach()  # straight-through estimator
        return zq, flat, commit

    @torch.no_grad()
    def update_codebook(self, z: torch.Tensor, flat: torch.Tensor, mask: torch.Tensor,
                        anatomy: torch.Tensor) -> None:
        """EMA step from the real vectors z [N, L, C] with their flat codes [N, L].

        Collective: every rank must call it in the same step (possibly with N = 0).
        """
        M, K, C = self.cfg.num_anatomies, self.cfg.codebook_size, self.cfg.code_dim
        sel = mask.bool()
        vecs, codes = z[sel].float(), flat[sel]  # [V, C], [V]
        stats = torch.zeros(M * K, 1 + C, device=self.codebook.device)
        stats[:, 0] = torch.bincount(codes, minlength=M * K).float()
        stats[:, 1:].index_add_(0, codes, vecs)
        dist.all_reduce_sum_(stats)  # same statistics, hence the same codebook, on every rank
        counts, sums = stats[:, 0].view(M, K), stats[:, 1:].view(M, K, C)
        if self.cfg.search == "anatomy":
            active = counts.sum(-1) > 0  # [M]
        else:
            active = torch.ones(M, dtype=torch.bool, device=counts.device)
        smoothed = self._ema_step(counts, sums, active)
        if self.cfg.dead_code_threshold > 0:
            dead = (smoothed < self.cfg.dead_code_threshold) & active[:, None]
            if bool(dead.any()):  # identical on all ranks (all-reduced inputs)
                vec_anat = anatomy[:, None].expand_as(flat)[sel]
                self._restart(dead, vecs, vec_anat)

    def _ema_step(self, counts: torch.Tensor, sums: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Apply the EMA to the active anatomies; returns the smoothed counts [M, K]."""
        d, eps, K = self.cfg.decay, self.cfg.eps, self.cfg.codebook_size
        act = active[:, None]
        self.ema_count.copy_(torch.where(act, d * self.ema_count + (1 - d) * counts, self.ema_count))
        self.ema_sum.copy_(torch.where(act[..., None], d * self.ema_sum + (1 - d) * sums, self.ema_sum))
        self.num_updates += active.long()
        n_hat, s_hat = self.ema_count, self.ema_sum
        if self.cfg.ema_bias_correction:
            corr = (1 - d ** self.num_updates.double()).float().clamp_min(1e-12)[:, None]  # [M, 1]
            n_hat, s_hat = n_hat / corr, s_hat / corr[..., None]
        if self.cfg.search == "anatomy":
            total = n_hat.sum(-1, keepdim=True)
            smoothed = (n_hat + eps) / (total + K * eps) * total
        else:
            total = n_hat.sum()
            smoothed = (n_hat + eps) / (total + n_hat.numel() * eps) * total
        new = s_hat / smoothed.clamp_min(1e-30)[..., None]
        ok = act & (smoothed > 0) & (self.num_updates[:, None] > 0)  # eps = 0: unused codes stay
        self.codebook.copy_(torch.where(ok[..., None], new, self.codebook))
        return smoothed

    def _restart(self, dead: torch.Tensor, vecs: torch.Tensor, vec_anat: torch.Tensor) -> None:
        """Replace dead codes [M, K] by random vectors of their anatomy, identical on all ranks."""
        M, K, C = dead.shape[0], dead.shape[1], vecs.shape[-1]
        proposal = torch.zeros(M * K, C, device=vecs.device)
        has = torch.zeros(M * K, dtype=torch.bool, device=vecs.device)
        for m in torch.nonzero(dead.any(-1)).flatten().tolist():  # loop over anatomies only
            pool = vecs[vec_anat == m]
            if pool.shape[0] == 0:
                continue
            slots = torch.nonzero(dead[m]).flatten() + m * K
            proposal[slots] = pool[torch.randint(pool.shape[0], (slots.numel(),), device=vecs.device)]
            has[slots] = True
        # first rank with a proposal wins, so every rank writes the same vector
        all_prop = dist.gather_with_grad(proposal).view(-1, M * K, C)
        all_has = dist.gather_with_grad(has).view(-1, M * K)
        src = all_has.float().argmax(0)  # first True along ranks (0 if none)
        chosen = all_prop[src, torch.arange(M * K, device=vecs.device)]
        take = all_has.any(0).view(M, K)
        corr = 1.0
        if self.cfg.ema_bias_correction:  # stored stats are biased: a corrected count of 1 = corr
            corr = (1 - self.cfg.decay ** self.num_updates.double()).float()[:, None]
        new_count = torch.ones_like(self.ema_count) * corr
        chosen = chosen.view(M, K, C)
        self.codebook.copy_(torch.where(take[..., None], chosen, self.codebook))
        self.ema_count.copy_(torch.where(take, new_count, self.ema_count))
        self.ema_sum.copy_(torch.where(take[..., None], chosen * new_count[..., None], self.ema_sum))

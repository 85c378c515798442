"""Eq. (3): the loss terms, the normal-only filter, and abnormal anatomies never reaching the codebook."""

from __future__ import annotations

import pytest
import torch

from ctvlp.losses.normality_vq import normality_vq_loss, select_normal
from ctvlp.models.vqvae import NormalityVQVAE, VQConfig

TINY = dict(token_dim=8, num_anatomies=2, codebook_size=4, code_dim=6, dim=16, depth=1, heads=2,
            dim_head=8, mlp_dim=32, hidden_dim=12)


def _batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(6, 5, 8, generator=g)
    mask = torch.ones(6, 5, dtype=torch.bool)
    anatomy = torch.tensor([0, 0, 0, 1, 1, 1])
    abnormal = torch.tensor([0, 1, 0, 1, 1, 1])  # anatomy 1 only abnormal
    return tokens, mask, anatomy, abnormal


def test_select_normal_keeps_label_zero():
    tokens, mask, anatomy, abnormal = _batch()
    t, m, a = select_normal(tokens, mask, anatomy, abnormal)
    assert t.shape == (2, 5, 8) and torch.equal(a, torch.tensor([0, 0]))
    torch.testing.assert_close(t, tokens[[0, 2]])
    with pytest.raises(ValueError):
        select_normal(tokens, mask, anatomy, abnormal[:3])


def test_abnormal_anatomies_never_update_the_codebook():
    torch.manual_seed(0)
    vq = NormalityVQVAE(VQConfig(**TINY)).train()
    tokens, mask, anatomy, abnormal = _batch()
    before = {k: v.clone() for k, v in vq.quantizer.state_dict().items()}
    for _ in range(3):
        vq(*select_normal(tokens, mask, anatomy, abnormal))
    after = vq.quantizer.state_dict()
    for name in ("codebook", "ema_count", "ema_sum"):
        assert torch.equal(after[name][1], before[name][1]), name  # anatomy 1: all abnormal
        assert not torch.equal(after[name][0], before[name][0]), name
    # without the filter the abnormal instances would have moved anatomy 1's codes
    vq(tokens, mask, anatomy)
    assert not torch.equal(vq.quantizer.codebook[1], before["codebook"][1])


def test_loss_terms():
    torch.manual_seed(0)
    vq = NormalityVQVAE(VQConfig(**TINY))
    tokens, mask, anatomy, _ = _batch()
    mask[0, 3:] = False
    out = vq(tokens, mask, anatomy)
    losses = normality_vq_loss(out, tokens, beta=0.25)
    sq = (out.recon - tokens).pow(2).mean(-1)
    torch.testing.assert_close(losses["recon"], sq[mask].mean())
    commit = (out.z - out.quantized.detach()).pow(2).mean(-1)[mask].mean()
    torch.testing.assert_close(losses["commitment"], commit)
    torch.testing.assert_close(losses["total"], losses["recon"] + 0.25 * commit)
    norm = normality_vq_loss(out, tokens, space="normalized")["recon"]
    torch.testing.assert_close(norm, (out.recon_norm - out.target_norm).pow(2).mean(-1)[mask].mean())
    with pytest.raises(ValueError):
        normality_vq_loss(out, tokens, space="pixels")


def test_empty_normal_set_gives_zero_loss():
    vq = NormalityVQVAE(VQConfig(**TINY))
    tokens, mask, anatomy, _ = _batch()
    out = vq(*select_normal(tokens, mask, anatomy, torch.ones(6, dtype=torch.long)))
    loss = normality_vq_loss(out, tokens[:0])["total"]
    assert loss.item() == 0.0 and loss.requires_grad

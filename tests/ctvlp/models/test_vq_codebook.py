"""Per-anatomy EMA codebook: codes move to the mean of their vectors, the EMA formula, anatomy
isolation, usage/perplexity, and the two-rank update equal to the one-rank one."""

from __future__ import annotations

import pytest
import torch

from ctvlp import dist
from ctvlp.models.vq_codebook import AnatomyEMAQuantizer, VQConfig, perplexity, usage_counts
from tests.ctvlp.gloo import run_ranks

M, K, C = 3, 4, 2


def _quantizer(**kw) -> AnatomyEMAQuantizer:
    torch.manual_seed(0)
    cfg = VQConfig(token_dim=4, num_anatomies=M, codebook_size=K, code_dim=C, **kw)
    q = AnatomyEMAQuantizer(cfg)
    # codes of anatomy m at (10 m + k, 0): far apart, so assignments are easy to predict
    grid = torch.stack([torch.arange(K, dtype=torch.float32), torch.zeros(K)], -1)
    q.codebook.copy_(torch.stack([grid + torch.tensor([10.0 * m, 0.0]) for m in range(M)]))
    return q


def _vectors(seed: int, n: int = 5, L: int = 6):
    """Vectors of anatomies 0 and 1 near their codes (anatomy 2 absent)."""
    g = torch.Generator().manual_seed(seed)
    anatomy = torch.tensor([0, 1, 0, 1, 0])[:n]
    k = torch.randint(0, K - 1, (n, L), generator=g)  # code K-1 never used
    z = torch.stack([10.0 * anatomy[:, None] + k, torch.zeros(n, L)], -1) + 0.3 * torch.randn(n, L, C, generator=g)
    mask = torch.rand(n, L, generator=g) > 0.2
    return z, mask, anatomy


def test_decay_zero_codes_move_to_mean_of_assigned_vectors():
    q = _quantizer(decay=0.0, eps=0.0)
    before = q.codebook.clone()
    z, mask, anatomy = _vectors(0)
    flat = q.nearest(z, anatomy)
    q.update_codebook(z, flat, mask, anatomy)
    for code in range(M * K):
        sel = (flat == code) & mask
        got = q.codebook.view(-1, C)[code]
        if sel.any():
            torch.testing.assert_close(got, z[sel].mean(0), rtol=0, atol=1e-6)
        else:  # unused (and absent anatomy 2): unchanged
            assert torch.equal(got, before.view(-1, C)[code])
    assert q.num_updates.tolist() == [1, 1, 0]


@pytest.mark.parametrize("bias_correction", [True, False])
def test_ema_formula_two_steps(bias_correction):
    d, eps = 0.8, 1e-3
    q = _quantizer(decay=d, eps=eps, ema_bias_correction=bias_correction)
    n, s = q.ema_count.clone(), q.ema_sum.clone()
    for step in (1, 2):
        z, mask, anatomy = _vectors(step)
        flat = q.nearest(z, anatomy)
        cnt = torch.bincount(flat[mask], minlength=M * K).float().view(M, K)
        sm = torch.zeros(M * K, C).index_add_(0, flat[mask], z[mask]).view(M, K, C)
        active = torch.tensor([True, True, False])[:, None]
        n = torch.where(active, d * n + (1 - d) * cnt, n)
        s = torch.where(active[..., None], d * s + (1 - d) * sm, s)
        corr = (1 - d ** step) if bias_correction else 1.0
        nh, sh = n / corr, s / corr
        tot = nh.sum(-1, keepdim=True)
        smooth = (nh + eps) / (tot + K * eps) * tot
        expected = sh / smooth[..., None]
        q.update_codebook(z, flat, mask, anatomy)
        torch.testing.assert_close(q.codebook[:2], expected[:2], rtol=1e-5, atol=1e-6)


def test_search_stays_within_the_anatomy():
    q = _quantizer()
    z = torch.tensor([[[20.0, 0.0]]])  # on code (2, 0) but labelled anatomy 0
    flat = q.nearest(z, torch.tensor([0]))
    assert flat.item() == K - 1  # nearest of anatomy 0's codes (3, 0)
    g = _quantizer(search="global")
    assert g.nearest(z, torch.tensor([0])).item() == 2 * K


def test_usage_and_perplexity():
    flat = torch.tensor([[0, 1, 2, 3], [4, 4, 4, 4]])
    counts = usage_counts(flat, torch.ones(2, 4, dtype=torch.bool), M, K)
    assert counts.tolist() == [[1, 1, 1, 1], [4, 0, 0, 0], [0, 0, 0, 0]]
    torch.testing.assert_close(perplexity(counts), torch.tensor([4.0, 1.0, 0.0]))


def test_dead_code_restart_uses_vectors_of_the_anatomy():
    q = _quantizer(decay=0.0, dead_code_threshold=0.5)
    z, mask, anatomy = _vectors(0)
    q.update_codebook(z, q.nearest(z, anatomy), mask, anatomy)
    # code K-1 of anatomies 0 and 1 was never chosen: restarted onto one of that anatomy's vectors
    for m in (0, 1):
        pool = z[mask & (anatomy[:, None] == m)]
        assert (pool == q.codebook[m, K - 1]).all(-1).any()
    assert torch.equal(q.codebook[2], _quantizer().codebook[2])  # absent anatomy untouched


def _two_rank_body(rank, world, expected, restart):
    kw = {"dead_code_threshold": 0.5} if restart else {}
    q = _quantizer(decay=0.9, **kw)
    for step in range(3):
        z, mask, anatomy = _vectors(10 + step)
        rows = slice(0, 2) if rank == 0 else slice(2, None)
        z, mask, anatomy = z[rows], mask[rows], anatomy[rows]
        q.update_codebook(z, q.nearest(z, anatomy), mask, anatomy)
    books = dist.gather_with_grad(q.codebook[None])
    assert torch.equal(books[0], books[1])  # every rank holds the same codebook
    if expected is not None:  # (codebook, ema_count) of one process on the whole batch
        torch.testing.assert_close(q.codebook, expected[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(q.ema_count, expected[1], rtol=1e-5, atol=1e-6)


def _one_rank(restart: bool) -> AnatomyEMAQuantizer:
    q = _quantizer(decay=0.9, **({"dead_code_threshold": 0.5} if restart else {}))
    for step in range(3):
        z, mask, anatomy = _vectors(10 + step)
        q.update_codebook(z, q.nearest(z, anatomy), mask, anatomy)
    return q


def test_two_rank_update_equals_one_rank_on_concatenated_batch(tmp_path):
    one = _one_rank(False)
    run_ranks(_two_rank_body, tmp_path, (one.codebook, one.ema_count), False)
    # random restarts differ from one process, but all ranks must agree
    run_ranks(_two_rank_body, tmp_path, None, True)


@pytest.mark.parametrize("field,value", [("search", "local"), ("decay", 1.0), ("condition", "x"),
                                         ("codebook_size", 0)])
def test_config_validation(field, value):
    with pytest.raises(ValueError):
        VQConfig(token_dim=4, num_anatomies=2, **{field: value})

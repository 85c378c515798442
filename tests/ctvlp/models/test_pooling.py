"""Batched anatomy query pooling == the released per-(sample, anatomy) nn.MultiheadAttention loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctvlp.models.pooling import AnatomyQueryPooling


def _naive(pool: AnatomyQueryPooling, tokens, flags):
    """Released-style loop: MHA(query_m, tokens of m, tokens of m) -> Linear_m -> L2 norm."""
    b, m = flags.shape[:2]
    emb = torch.zeros(b, m, pool.proj_weight.shape[-1])
    valid = torch.zeros(b, m, dtype=torch.bool)
    for i in range(b):
        for j in range(m):
            sel = tokens[i, flags[i, j]]  # [n, C]
            if sel.shape[0] == 0:
                continue
            out, _ = pool.attn(pool.query[j][None, None], sel[None], sel[None])  # [1, 1, C]
            lin = out[0, 0] @ pool.proj_weight[j] + pool.proj_bias[j]  # == nn.Linear(C, E)_j
            emb[i, j], valid[i, j] = F.normalize(lin, dim=-1), True
    return emb, valid


def _randomise(pool: AnatomyQueryPooling, seed: int) -> None:
    """Non-trivial queries and biases (the zero init would make attention uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (pool.query, pool.attn.in_proj_bias, pool.attn.out_proj.bias):
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "b, m, levels, c, e, heads",
    [(2, 3, (40, 9, 3), 16, 8, 4), (3, 5, (64, 8, 1), 32, 24, 2), (1, 1, (5,), 8, 8, 1)],
)
def test_batched_equals_naive_loop(b, m, levels, c, e, heads):
    torch.manual_seed(0)
    pool = AnatomyQueryPooling(m, c, e, heads).eval()
    _randomise(pool, seed=1)
    tokens = [torch.randn(b, n, c) for n in levels]
    flags = [torch.rand(b, m, n) < 0.3 for n in levels]
    flags[0][0, 0] = False  # anatomy 0 absent from sample 0 at every level
    for f in flags[1:]:
        f[0, 0] = False
    with torch.no_grad():
        out = pool(tokens, flags)
        ref, ref_valid = _naive(pool, torch.cat(tokens, 1), torch.cat(flags, -1))
    assert torch.equal(out["valid"], ref_valid) and not out["valid"][0, 0]
    torch.testing.assert_close(out["embeds"], ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out["embeds"][0, 0], torch.zeros(e))


def test_zero_init_query_is_mean_pooling():
    torch.manual_seed(0)
    pool = AnatomyQueryPooling(2, 8, 8, 2).eval()
    tokens = torch.randn(2, 10, 8)
    flags = torch.rand(2, 2, 10) < 0.5
    flags[:, :, 0] = True
    pooled, _ = pool.attend(tokens, flags)
    _, _, w_v = pool.attn.in_proj_weight.chunk(3)
    values = tokens @ w_v.T  # in-proj biases are zero at init
    mean = (flags[..., None] * values[:, None]).sum(2) / flags.sum(-1, keepdim=True)
    torch.testing.assert_close(pooled, pool.attn.out_proj(mean))


def test_empty_anatomy_gives_finite_gradients_in_train_mode():
    torch.manual_seed(0)
    pool = AnatomyQueryPooling(3, 8, 4, 2).train()
    tokens = torch.randn(2, 12, 8, requires_grad=True)
    flags = torch.rand(2, 3, 12) < 0.4
    flags[1, 2] = False
    out = pool(tokens, flags)
    out["embeds"].sum().backward()
    assert torch.isfinite(tokens.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in pool.parameters() if p.grad is not None)
    norms = out["embeds"].norm(dim=-1)
    torch.testing.assert_close(norms[out["valid"]], torch.ones(int(out["valid"].sum())))


def test_sample_outputs_are_independent_of_other_samples():
    torch.manual_seed(0)
    pool = AnatomyQueryPooling(2, 8, 8, 2).eval()
    _randomise(pool, seed=3)
    tokens, flags = torch.randn(2, 20, 8), torch.rand(2, 2, 20) < 0.5
    base = pool(tokens, flags)["embeds"][0]
    tokens2 = tokens.clone()
    tokens2[1] = torch.randn(20, 8)
    torch.testing.assert_close(pool(tokens2, flags)["embeds"][0], base)


@pytest.mark.parametrize(
    "flags, error",
    [(torch.ones(2, 3, 12, dtype=torch.bool), ValueError), (torch.ones(2, 2, 12), ValueError)],
)
def test_bad_flags_raise(flags, error):
    pool = AnatomyQueryPooling(2, 8, 8, 2)
    with pytest.raises(error):
        pool(torch.randn(2, 12, 8), flags)


def test_heads_must_divide_token_dim():
    with pytest.raises(ValueError, match="divisible"):
        AnatomyQueryPooling(2, 10, 8, 4)


def _unfolded_reference(pool: AnatomyQueryPooling, tokens, flags):
    """Textbook MHA with projected K and V, masked logits and attention dropout (train mode)."""
    b, l, c = tokens.shape
    h, m = pool.num_heads, pool.num_anatomies
    d = c // h
    w_q, w_k, w_v = pool.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = pool.attn.in_proj_bias.chunk(3)
    q = F.linear(pool.query, w_q, b_q).view(m, h, d).transpose(0, 1)  # [h, M, d]
    k = F.linear(tokens, w_k, b_k).view(b, l, h, d).transpose(1, 2)  # [B, h, L, d]
    v = F.linear(tokens, w_v, b_v).view(b, l, h, d).transpose(1, 2)
    logits = torch.einsum("hmd,bhld->bhml", q, k) / d**0.5
    attn = logits.masked_fill(~flags[:, None], float("-inf")).softmax(-1)
    attn = F.dropout(attn, pool.attn.dropout, True)
    out = torch.einsum("bhml,bhld->bmhd", attn, v).reshape(b, m, c)
    return pool.attn.out_proj(out)


def test_folded_projections_equal_unfolded_with_dropout():
    torch.manual_seed(0)
    pool = AnatomyQueryPooling(3, 16, 8, 4, dropout=0.3).train()
    _randomise(pool, seed=5)
    tokens, flags = torch.randn(2, 30, 16), torch.rand(2, 3, 30) < 0.5
    flags[..., 0] = True
    torch.manual_seed(7)
    got, _ = pool.attend(tokens, flags)
    torch.manual_seed(7)  # same RNG state -> the same dropout mask on the same [B, h, M, L] shape
    ref = _unfolded_reference(pool, tokens, flags)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_level_list_equals_concatenated_tensor():
    torch.manual_seed(0)
    pool = AnatomyQueryPooling(2, 8, 8, 2).eval()
    _randomise(pool, seed=2)
    tokens = [torch.randn(2, n, 8) for n in (12, 5, 2)]
    flags = [torch.rand(2, 2, n) < 0.5 for n in (12, 5, 2)]
    listed = pool(tokens, flags)["embeds"]
    joined = pool(torch.cat(tokens, 1), torch.cat(flags, -1))["embeds"]
    torch.testing.assert_close(listed, joined)
    with pytest.raises(ValueError, match="as many"):
        pool(tokens, flags[:2])

"""MeDSLIP's ProtoCL: a hand-computed case, a naive loop (values and gradients), the negative
sampler (uniform over unlinked entries, -1 padding when there are fewer than K)."""

from __future__ import annotations

import math

import pytest
import torch

from ctvlp.losses.prototype_contrast import prototype_contrast_loss, sample_negatives


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_hand_computed():
    book = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # V = 3, H = 2
    queries = torch.tensor([[[2.0, 1.0], [5.0, 5.0]]])  # [B=1, Q=2, H]
    links = torch.tensor([[[True, True, False], [False, False, True]]])
    present = torch.tensor([[True, False]])  # query 1 is absent: left out
    negatives = torch.tensor([[[2, -1], [0, 1]]])  # query 0: one negative (entry 2), one empty slot
    # query 0: prototype = mean(book0, book1) = (.5, .5): <q, p> = 1.5; negative <q, book2> = 3
    want = _lse([1.5, 3.0]) - 1.5  # no temperature, as released
    got = prototype_contrast_loss(queries, book, links, present, negatives)
    assert got.item() == pytest.approx(want, rel=1e-6)


def naive_proto(queries, book, links, present, negatives):
    terms = []
    for b in range(queries.shape[0]):
        for q in range(queries.shape[1]):
            linked = [v for v in range(book.shape[0]) if links[b, q, v]]
            if not present[b, q] or not linked:
                continue
            proto = sum(book[v] for v in linked) / len(linked)
            scores = [torch.dot(queries[b, q], proto)]
            scores += [torch.dot(queries[b, q], book[int(n)]) for n in negatives[b, q] if n >= 0]
            terms.append(torch.log(sum(torch.exp(s) for s in scores)) - scores[0])
    return sum(terms) / len(terms)


def test_matches_naive_loop_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    b, q, v, h = 3, 4, 6, 5
    queries = 0.3 * torch.randn(b, q, h, generator=g)
    book = torch.randn(v, h, generator=g)
    links = torch.rand(b, q, v, generator=g) < 0.3
    links[0, 0] = False  # present but unlinked: no prototype, left out
    present = torch.rand(b, q, generator=g) < 0.7
    present[0, 0] = True
    negatives = sample_negatives(links, 7, torch.Generator().manual_seed(1))
    out = []
    for fn in (prototype_contrast_loss, naive_proto):
        qq = queries.clone().requires_grad_()
        loss = fn(qq, book, links, present, negatives)
        out.append((loss.detach(), torch.autograd.grad(loss, qq)[0]))
    for got, ref in zip(*out):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_sample_negatives_unlinked_distinct_and_padded():
    links = torch.zeros(2, 3, 10, dtype=torch.bool)
    links[0, 0, :8] = True  # 2 unlinked entries: 2 negatives, 5 slots -1
    links[1, 2, 4] = True
    idx = sample_negatives(links, 7, torch.Generator().manual_seed(0))
    assert idx.shape == (2, 3, 7) and idx.dtype == torch.int64
    assert sorted(idx[0, 0, :2].tolist()) == [8, 9] and (idx[0, 0, 2:] == -1).all()
    for b in range(2):
        for q in range(3):
            got = [i for i in idx[b, q].tolist() if i >= 0]
            assert len(set(got)) == len(got) and not any(links[b, q, i] for i in got)
    # fewer book entries than K: every unlinked one, then -1
    small = sample_negatives(torch.tensor([[[True, False, False]]]), 7)
    assert sorted(i for i in small[0, 0].tolist() if i >= 0) == [1, 2] and (small == -1).sum() == 5


def test_sample_negatives_uniform():
    links = torch.zeros(4000, 1, 5, dtype=torch.bool)
    links[:, :, 0] = True
    idx = sample_negatives(links, 1, torch.Generator().manual_seed(0))[:, 0, 0]
    counts = torch.bincount(idx, minlength=5).float()
    assert counts[0] == 0 and ((counts[1:] / 4000 - 0.25).abs() < 0.03).all(), counts


def test_nothing_present_gives_zero_with_graph():
    queries = torch.randn(1, 2, 3, requires_grad=True)
    loss = prototype_contrast_loss(queries, torch.randn(4, 3), torch.ones(1, 2, 4, dtype=torch.bool),
                                   torch.zeros(1, 2, dtype=torch.bool), torch.full((1, 2, 7), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError):
        prototype_contrast_loss(queries, torch.randn(4, 2), torch.ones(1, 2, 4, dtype=torch.bool),
                                torch.ones(1, 2, dtype=torch.bool), torch.full((1, 2, 7), -1))

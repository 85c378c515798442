"""MeDSLIP's existence loss: a hand-computed case, a naive loop (values and gradients), and the
released label rule (-1 and 2 left out)."""

from __future__ import annotations

import math

import pytest
import torch

from ctvlp.losses.query_existence import query_existence_loss


def test_hand_computed():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [3.0, 3.0]]])  # [B=1, Q=3, 2]
    labels = torch.tensor([[1, 1, 2]])  # the "uncertain" 2 is left out, as released
    # -log softmax([0, 1])[1] = log(1 + e^-1);  -log softmax([2, 0])[1] = log(e^2 + 1)
    want = (math.log(1 + math.exp(-1)) + math.log(math.exp(2) + 1)) / 2
    assert query_existence_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)


def naive_ce(logits, labels):
    terms = []
    for b in range(logits.shape[0]):
        for q in range(logits.shape[1]):
            y = int(labels[b, q])
            if y in (0, 1):
                terms.append(torch.logsumexp(logits[b, q], 0) - logits[b, q, y])
    return sum(terms) / len(terms)


def test_matches_naive_loop_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 2, generator=g)
    labels = torch.randint(-1, 3, (3, 5), generator=g)
    out = []
    for fn in (query_existence_loss, naive_ce):
        z = logits.clone().requires_grad_()
        loss = fn(z, labels)
        out.append((loss.detach(), torch.autograd.grad(loss, z)[0]))
    for got, ref in zip(*out):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_nothing_labelled_and_bad_shapes():
    z = torch.randn(2, 3, 2, requires_grad=True)
    loss = query_existence_loss(z, torch.full((2, 3), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError):
        query_existence_loss(z[..., :1], torch.zeros(2, 3, dtype=torch.long))

"""ASG's L_IRL: a hand-computed BCE, a naive loop (values and gradients), left-out labels."""

from __future__ import annotations

import math

import pytest
import torch

from ctvlp.losses.image_tag_recognition import image_tag_recognition_loss


def test_hand_computed():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 5.0]])
    labels = torch.tensor([[1, 0], [0, -1]])  # the -1 entry is left out
    # -log sigmoid(0) = log 2;  -log(1 - sigmoid(2)) = log(1 + e^2);  -log(1 - sigmoid(-1)) = log(1 + e^-1)
    want = (math.log(2) + math.log(1 + math.exp(2)) + math.log(1 + math.exp(-1))) / 3
    assert image_tag_recognition_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)


def naive_bce(logits, labels):
    terms = []
    for b in range(logits.shape[0]):
        for f in range(logits.shape[1]):
            if labels[b, f] >= 0:
                p = torch.sigmoid(logits[b, f])
                terms.append(-torch.log(p) if labels[b, f] == 1 else -torch.log(1 - p))
    return sum(terms) / len(terms)


def test_matches_naive_loop_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g)
    labels = torch.randint(-1, 2, (4, 6), generator=g)
    out = []
    for fn in (image_tag_recognition_loss, naive_bce):
        z = logits.clone().requires_grad_()
        loss = fn(z, labels)
        out.append((loss.detach(), torch.autograd.grad(loss, z)[0]))
    for got, ref in zip(*out):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(out[0][1][labels < 0]) == 0  # left-out entries get no gradient


def test_nothing_labelled_and_bad_shapes():
    z = torch.randn(2, 3, requires_grad=True)
    loss = image_tag_recognition_loss(z, torch.full((2, 3), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError):
        image_tag_recognition_loss(z, torch.zeros(2, 4, dtype=torch.long))

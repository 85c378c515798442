"""MeDSLIP's ICL: a hand-computed case, a naive loop (values and gradients), unmentioned pairs."""

from __future__ import annotations

import math

import pytest
import torch

from ctvlp.losses.intra_image_contrast import intra_image_contrast_loss


def test_hand_computed():
    pathology = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [B=1, F=2, d=2]
    anatomy = torch.tensor([[[1.0, 1.0], [0.5, 0.0], [0.0, 0.0]]])  # [B=1, M=3, d=2]
    matrix = torch.tensor([[[1, 0], [-1, 1], [-1, -1]]])  # [B, M, F]
    # logits <A_j, P_f>: (j0, f0) = 1 -> y 1;  (j0, f1) = 2 -> y 0;  (j1, f1) = 0 -> y 1
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2)) + math.log(2)) / 3
    assert intra_image_contrast_loss(pathology, anatomy, matrix).item() == pytest.approx(want, rel=1e-6)


def naive_icl(pathology, anatomy, matrix):
    terms = []
    for b in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            for f in range(matrix.shape[2]):
                if matrix[b, j, f] >= 0:
                    p = torch.sigmoid(torch.dot(anatomy[b, j], pathology[b, f]))
                    terms.append(-torch.log(p) if matrix[b, j, f] == 1 else -torch.log(1 - p))
    return sum(terms) / len(terms)


def test_matches_naive_loop_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    pathology, anatomy = 0.5 * torch.randn(2, 5, 3, generator=g), 0.5 * torch.randn(2, 4, 3, generator=g)
    matrix = torch.randint(-1, 2, (2, 4, 5), generator=g)
    out = []
    for fn in (intra_image_contrast_loss, naive_icl):
        p, a = pathology.clone().requires_grad_(), anatomy.clone().requires_grad_()
        loss = fn(p, a, matrix)
        out.append((loss.detach(), *torch.autograd.grad(loss, [p, a])))
    for got, ref in zip(*out):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_nothing_mentioned_and_bad_shapes():
    p = torch.randn(1, 2, 3, requires_grad=True)
    a = torch.randn(1, 4, 3)
    loss = intra_image_contrast_loss(p, a, torch.full((1, 4, 2), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError):
        intra_image_contrast_loss(p, a, torch.zeros(1, 2, 4, dtype=torch.long))

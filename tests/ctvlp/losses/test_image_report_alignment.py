"""ASG's L_IRA: a hand-computed case, a naive per-row loop (values and gradients), symmetry, shapes.
The two-rank gathered parity of IRA and ERL is in test_soft_label_alignment.py (one process pair)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctvlp.losses.image_report_alignment import image_report_alignment_loss


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_hand_computed():
    # img (1,0), (0,1); rep (1,0), (.6,.8); tau = 1:  S = [[1, .6], [0, .8]]
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rep = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    i2t = (_lse([1, .6]) - 1 + _lse([0, .8]) - .8) / 2  # rows of S
    t2i = (_lse([1, 0]) - 1 + _lse([.6, .8]) - .8) / 2  # rows of S^T
    assert i2t + t2i == pytest.approx(0.8978, abs=1e-4)  # summed, not averaged (released)
    got = image_report_alignment_loss(img, rep, 1.0)
    assert got.item() == pytest.approx(i2t + t2i, rel=1e-6)
    # tau divides the logits: tau = 0.5 doubles every similarity
    i2t = (_lse([2, 1.2]) - 2 + _lse([0, 1.6]) - 1.6) / 2
    t2i = (_lse([2, 0]) - 2 + _lse([1.2, 1.6]) - 1.6) / 2
    assert image_report_alignment_loss(img, rep, torch.tensor(0.5)).item() == pytest.approx(i2t + t2i, rel=1e-6)


def naive_ira(img, rep, tau):
    """Row by row: -log(exp(S_ii) / sum_k exp(S_ik)) averaged, for S and S^T, summed."""
    b = img.shape[0]
    total = 0.0
    for a, c in ((img, rep), (rep, img)):
        rows = []
        for i in range(b):
            s = [torch.dot(a[i], c[k]) / tau for k in range(b)]
            rows.append(torch.log(sum(torch.exp(x) for x in s)) - s[i])
        total = total + sum(rows) / b
    return total


def _batch(seed, b=5, e=4):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(b, e, generator=g), dim=-1),
            F.normalize(torch.randn(b, e, generator=g), dim=-1))


def test_matches_naive_loop_values_and_gradients():
    img, rep = _batch(0)
    out = []
    for fn in (image_report_alignment_loss, naive_ira):
        a, b = img.clone().requires_grad_(), rep.clone().requires_grad_()
        tau = torch.tensor(0.2, requires_grad=True)
        loss = fn(a, b, tau)
        out.append((loss.detach(), *torch.autograd.grad(loss, [a, b, tau])))
    for got, ref in zip(*out):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_symmetric_under_swapping_image_and_report():
    img, rep = _batch(1)
    torch.testing.assert_close(image_report_alignment_loss(img, rep, 0.07),
                               image_report_alignment_loss(rep, img, 0.07))


def test_bad_shapes_raise():
    img, rep = _batch(2)
    with pytest.raises(ValueError):
        image_report_alignment_loss(img, rep[:, :3], 0.07)
    with pytest.raises(ValueError):
        image_report_alignment_loss(img[None], rep[None], 0.07)

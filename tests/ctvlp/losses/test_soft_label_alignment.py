"""ASG's L_ERL: soft targets by hand, a naive loop (values and gradients), its limits, and the
two-rank gathered IRA and ERL equal to the one-process losses (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctvlp.losses.image_report_alignment import image_report_alignment_loss
from ctvlp.losses.soft_label_alignment import soft_label_alignment_loss, soft_targets
from tests.ctvlp.gloo import run_ranks


def test_soft_targets_by_hand():
    # tags (1, 0), (1, 1), (0, 0): cos(0, 1) = 1/sqrt(2); the all-zero row has cos 0 with everyone
    tags = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    c = 1 / math.sqrt(2)
    raw = [[0.8 + 0.2, 0.2 * c, 0.0], [0.2 * c, 0.8 + 0.2, 0.0], [0.0, 0.0, 0.8]]
    want = [[(x + 1e-6) / sum(y + 1e-6 for y in row) for x in row] for row in raw]
    torch.testing.assert_close(soft_targets(tags), torch.tensor(want), rtol=1e-6, atol=1e-7)


def naive_erl(img, rep, tags, tau, hard=0.8):
    """Entry by entry: Y from the cosines of the tag vectors, then the four KL sums / B."""
    b = img.shape[0]
    norms = [torch.sqrt(sum(t * t for t in tags[i])) for i in range(b)]
    y = [[hard * (i == k) + (1 - hard) * (float(torch.dot(tags[i], tags[k]) / (norms[i] * norms[k]))
                                           if norms[i] > 0 and norms[k] > 0 else 0.0) + 1e-6
          for k in range(b)] for i in range(b)]
    y = [[v / sum(row) for v in row] for row in y]
    total = 0.0
    for a, c in ((img, rep), (rep, img)):  # S, then S^T (its row i is column i of S)
        s = [[torch.dot(a[i], c[k]) / tau for k in range(b)] for i in range(b)]
        kl_yp = kl_py = 0.0
        for i in range(b):
            lse = torch.log(sum(torch.exp(x) for x in s[i]))
            for k in range(b):
                logp = s[i][k] - lse
                kl_yp = kl_yp + y[i][k] * (math.log(y[i][k]) - logp)
                kl_py = kl_py + torch.exp(logp) * (logp - math.log(y[i][k]))
        total = total + (kl_yp / b + kl_py / b) / 2
    return total / 2


def _batch(seed, b=5, e=4, f=3):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, e, generator=g), dim=-1)
    rep = F.normalize(torch.randn(b, e, generator=g), dim=-1)
    tags = (torch.rand(b, f, generator=g) < 0.5).float()
    tags[0] = 0  # a study without findings
    tags[1] = tags[2]  # two studies with the same findings
    return img, rep, tags


def test_matches_naive_loop_values_and_gradients():
    img, rep, tags = _batch(0)
    out = []
    for fn in (soft_label_alignment_loss, naive_erl):
        a, b = img.clone().requires_grad_(), rep.clone().requires_grad_()
        tau = torch.tensor(0.3, requires_grad=True)
        loss = fn(a, b, tags, tau)
        out.append((loss.detach(), *torch.autograd.grad(loss, [a, b, tau])))
    for got, ref in zip(*out):
        torch.testing.assert_close(got.float(), ref.float(), rtol=1e-5, atol=1e-6)


def test_zero_exactly_when_softmax_equals_targets():
    # logits = log Y give softmax(S) = Y; Y is symmetric here (tags all equal), so S^T too
    tags = torch.ones(3, 2)
    y = soft_targets(tags)
    assert torch.allclose(y, y.t())
    # build S = log Y directly through img = I, rep rows = log Y (tau = 1)
    img = torch.eye(3)
    rep = y.log().t().contiguous()
    assert soft_label_alignment_loss(img, rep, tags, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_label_alignment_loss(img, rep * 2, tags, 1.0).item() > 1e-3


def test_bad_tags_raise():
    img, rep, tags = _batch(1)
    with pytest.raises(ValueError):
        soft_label_alignment_loss(img, rep, tags[:3], 0.07)


# ----------------------------------------------------------------------- two ranks, one batch
SPLIT = 3  # rank 0 holds studies [0, 3), rank 1 [3, 5): unequal shards


def _both(a, b, tags, tau):
    return image_report_alignment_loss(a, b, tau), soft_label_alignment_loss(a, b, tags, tau)


def _parity_body(rank, world, expected):
    img, rep, tags = _batch(2)
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    for k, (loss_ref, g_img, g_rep, g_tau) in enumerate(expected):
        a, b = img[rows].clone().requires_grad_(), rep[rows].clone().requires_grad_()
        tau = torch.tensor(0.2, requires_grad=True)
        loss = _both(a, b, tags[rows], tau)[k]
        loss.backward()
        torch.testing.assert_close(loss.detach(), loss_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.grad, g_img[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.grad, g_rep[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tau.grad, g_tau, rtol=1e-5, atol=1e-6)


def test_two_rank_gathered_ira_and_erl_equal_one_process(tmp_path):
    img, rep, tags = _batch(2)
    expected = []
    for k in range(2):  # 0: IRA, 1: ERL
        a, b = img.clone().requires_grad_(), rep.clone().requires_grad_()
        tau = torch.tensor(0.2, requires_grad=True)
        loss = _both(a, b, tags, tau)[k]
        loss.backward()
        expected.append((loss.detach(), a.grad, b.grad, tau.grad))
    run_ranks(_parity_body, tmp_path, expected)

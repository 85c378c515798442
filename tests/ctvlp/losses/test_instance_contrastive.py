"""VSEI instance-level visual contrast: a hand-computed case (value and analytic gradient), a naive
per-sample loop (values and gradients), labels ignored, and the two-rank gathered parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctvlp.losses.instance_contrastive import instance_contrastive_loss
from tests.ctvlp.gloo import run_ranks


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_hand_computed_value_and_gradient():
    """One anatomy, tau = 1; q = (1,0), (0,1), (.6,.8); k = (1,0), (0,1), (.8,.6).

    S[i, k] = <q_i, k_k>: row 0 [1, 0, .8], row 1 [0, 1, .6], row 2 [.6, .8, .96]; each row's
    only positive is its own view: (0.7824 + 0.7121 + 0.9360) / 3 = 0.8102.
    """
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])[:, None, :]
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])[:, None, :]
    valid = torch.ones(3, 1, dtype=torch.bool)
    expected = (_lse([1, 0, .8]) - 1 + _lse([0, 1, .6]) - 1 + _lse([.6, .8, .96]) - .96) / 3
    assert expected == pytest.approx(0.8102, abs=1e-4)
    a = q.clone().requires_grad_()
    loss = instance_contrastive_loss(a, k, valid, 1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # dL/dq_i = (softmax_k(S_i.) - onehot_i) @ K / N
    s = q[:, 0] @ k[:, 0].t()
    want = (s.softmax(1) - torch.eye(3)) @ k[:, 0] / 3
    (grad,) = torch.autograd.grad(loss, a)
    torch.testing.assert_close(grad[:, 0], want, rtol=1e-5, atol=1e-6)


def naive_instance(q, k, valid, tau):
    """Per-(sample, anatomy) loop reference: the own view against every intact momentum view."""
    B, M, _ = q.shape
    terms = []
    for j in range(M):
        idx = [i for i in range(B) if valid[i, j]]
        for i in idx:
            logits = torch.stack([q[i, j] @ k[c, j] / tau for c in idx])
            terms.append(torch.logsumexp(logits, 0) - logits[idx.index(i)])
    return sum(terms) / max(len(terms), 1)


def _random_batch(seed, B=7, M=3, E=5):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, M, E, generator=g), dim=-1)
    k = F.normalize(torch.randn(B, M, E, generator=g), dim=-1)
    valid = torch.rand(B, M, generator=g) > 0.25
    return q, k, valid


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_loop_values_and_gradients(seed):
    q, k, valid = _random_batch(seed)
    out = []
    for fn in (instance_contrastive_loss, naive_instance):
        a = q.clone().requires_grad_()
        loss = fn(a, k, valid, 0.2)
        out.append((loss.detach(), torch.autograd.grad(loss, a)[0]))
    for got, ref in zip(out[0], out[1]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_momentum_views_get_no_gradient():
    q, k, valid = _random_batch(2)
    k.requires_grad_()
    instance_contrastive_loss(q.requires_grad_(), k, valid, 0.07).backward()
    assert k.grad is None and q.grad is not None


SPLIT = 2  # rank 0 holds samples [0, 2), rank 1 [2, 7)


def _parity_body(rank, world, expected):
    q, k, valid = _random_batch(3)
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    a = q[rows].clone().requires_grad_()
    loss = instance_contrastive_loss(a, k[rows], valid[rows], 0.1)
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, expected[1][rows], rtol=1e-5, atol=1e-6)


def test_two_rank_gathered_loss_equals_one_process(tmp_path):
    q, k, valid = _random_batch(3)
    a = q.clone().requires_grad_()
    loss = instance_contrastive_loss(a, k, valid, 0.1)
    loss.backward()
    run_ranks(_parity_body, tmp_path, (loss.detach(), a.grad))

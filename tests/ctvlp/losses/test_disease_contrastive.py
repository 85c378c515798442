"""Eq. (2) disease-level visual contrastive loss: hand-computed case, naive-loop parity (values and
gradients), positive sets, the momentum encoder EMA, and the two-rank gathered parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctvlp.losses.disease_contrastive import disease_contrastive_loss, disease_positive_mask
from tests.ctvlp.gloo import run_ranks


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def _three_samples():
    """One anatomy, tau = 1; online q = (1,0), (0,1), (.6,.8); momentum k = (1,0), (0,1), (.8,.6).

    S[i, k] = <q_i, k_k>:  row 0 [1, 0, .8],  row 1 [0, 1, .6],  row 2 [.6, .8, .96].
    Labels: samples 0 and 2 normal, sample 1 abnormal.
    """
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])[:, None, :]
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])[:, None, :]
    return q, k, torch.ones(3, 1, dtype=torch.bool), torch.tensor([[0], [1], [0]])


def test_hand_computed_sum_and_mean():
    q, k, valid, abnormal = _three_samples()
    # "sum" (eq. 2 as printed): normal rows add one term per normal positive (samples 0 and 2)
    #   row 0: 2 lse(1, 0, .8) - (1 + .8)    = 1.7647
    #   row 1: lse(0, 1, .6) - 1  (own view) = 0.7121
    #   row 2: 2 lse(.6, .8, .96) - (.6 + .96) = 2.2320
    #   loss = (1.7647 + 0.7121 + 2.2320) / 3 = 1.5696
    rows = [2 * _lse([1, 0, .8]) - 1.8, _lse([0, 1, .6]) - 1, 2 * _lse([.6, .8, .96]) - 1.56]
    assert sum(rows) / 3 == pytest.approx(1.5696, abs=1e-4)
    got = disease_contrastive_loss(q, k, valid, abnormal, 1.0)
    assert got.item() == pytest.approx(sum(rows) / 3, rel=1e-6)
    # "mean": normal rows divided by their 2 positives: (0.8824 + 0.7121 + 1.1160) / 3 = 0.9035
    rows = [_lse([1, 0, .8]) - .9, _lse([0, 1, .6]) - 1, _lse([.6, .8, .96]) - .78]
    got = disease_contrastive_loss(q, k, valid, abnormal, 1.0, positives="mean")
    assert got.item() == pytest.approx(sum(rows) / 3, rel=1e-6)
    assert got.item() == pytest.approx(0.9035, abs=1e-4)


def test_positive_sets():
    valid = torch.tensor([[1], [1], [1], [0]], dtype=torch.bool)
    abnormal = torch.tensor([[0], [1], [0], [0]])
    pos = disease_positive_mask(valid, abnormal)[0].int()
    # normal 0 and 2 are positives of each other and of themselves; abnormal 1 only of itself;
    # sample 3 is not intact: neither anchor nor positive
    assert pos.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def naive_disease(q, k, valid, abnormal, tau, positives="sum"):
    """Per-sample loop reference of eq. 2."""
    B, M, _ = q.shape
    terms = []
    for j in range(M):
        idx = [i for i in range(B) if valid[i, j]]
        for i in idx:
            lse = torch.logsumexp(torch.stack([q[i, j] @ k[c, j] / tau for c in idx]), 0)
            if int(abnormal[i, j]):
                pos = [i]
            else:
                pos = [p for p in idx if int(abnormal[p, j]) == 0]
            term = -sum(q[i, j] @ k[p, j] / tau - lse for p in pos)
            terms.append(term / len(pos) if positives == "mean" else term)
    return sum(terms) / max(len(terms), 1)


def _random_batch(seed, B=6, M=3, E=5):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, M, E, generator=g), dim=-1)
    k = F.normalize(torch.randn(B, M, E, generator=g), dim=-1)
    valid = torch.rand(B, M, generator=g) > 0.25
    abnormal = (torch.rand(B, M, generator=g) > 0.6).long()
    return q, k, valid, abnormal


@pytest.mark.parametrize("positives", ["sum", "mean"])
def test_matches_naive_loop_values_and_gradients(positives):
    q, k, valid, abnormal = _random_batch(0)
    out = []
    for fn in (disease_contrastive_loss, naive_disease):
        a = q.clone().requires_grad_()
        loss = fn(a, k, valid, abnormal, 0.2, positives=positives)
        out.append((loss.detach(), torch.autograd.grad(loss, a)[0]))
    for got, ref in zip(out[0], out[1]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_momentum_features_get_no_gradient():
    q, k, valid, abnormal = _random_batch(1)
    k.requires_grad_()
    loss = disease_contrastive_loss(q.requires_grad_(), k, valid, abnormal, 0.07)
    loss.backward()
    assert k.grad is None and q.grad is not None


def test_bad_positive_mode_raises():
    q, k, valid, abnormal = _random_batch(2)
    with pytest.raises(ValueError):
        disease_contrastive_loss(q, k, valid, abnormal, 0.07, positives="max")


SPLIT = 2  # rank 0 holds samples [0, 2), rank 1 [2, 7)


def _parity_body(rank, world, expected):
    q, k, valid, abnormal = _random_batch(3, B=7)
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    for positives, (loss_ref, grad_ref) in zip(("sum", "mean"), expected):
        a = q[rows].clone().requires_grad_()
        loss = disease_contrastive_loss(a, k[rows], valid[rows], abnormal[rows], 0.1, positives=positives)
        loss.backward()
        torch.testing.assert_close(loss.detach(), loss_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.grad, grad_ref[rows], rtol=1e-5, atol=1e-6)


def test_two_rank_gathered_loss_equals_one_process(tmp_path):
    q, k, valid, abnormal = _random_batch(3, B=7)
    expected = []
    for positives in ("sum", "mean"):
        a = q.clone().requires_grad_()
        loss = disease_contrastive_loss(a, k, valid, abnormal, 0.1, positives=positives)
        loss.backward()
        expected.append((loss.detach(), a.grad))
    run_ranks(_parity_body, tmp_path, expected)

"""ASG's L_ARSA: a hand-computed scan, a naive loop over scans and anatomies (values and
gradients), masking of absent anatomies, and the organ-identity solution it admits."""

from __future__ import annotations

import math

import pytest
import torch

from ctvlp.losses.region_sentence_alignment import region_sentence_alignment_loss


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_hand_computed():
    # one scan, anatomies 0 and 2 valid, 1 absent; tau = 1
    regions = torch.tensor([[[1.0, 0.0], [5.0, 5.0], [0.6, 0.8]]])
    sentences = torch.tensor([[[0.8, 0.6], [-5.0, 5.0], [0.0, 1.0]]])
    valid = torch.tensor([[True, False, True]])
    # S over {0, 2}: S[0] = [<r0,s0>, <r0,s2>] = [.8, 0];  S[2] = [<r2,s0>, <r2,s2>] = [.96, .8]
    r2s = (_lse([.8, 0]) - .8 + _lse([.96, .8]) - .8) / 2
    s2r = (_lse([.8, .96]) - .8 + _lse([0, .8]) - .8) / 2  # columns: sentence k against regions
    got = region_sentence_alignment_loss(regions, sentences, valid, 1.0)
    assert got.item() == pytest.approx(r2s + s2r, rel=1e-6)
    assert r2s + s2r == pytest.approx(1.1474, abs=1e-4)


def naive_arsa(regions, sentences, valid, tau):
    rows_r2s, rows_s2r = [], []
    for b in range(regions.shape[0]):
        idx = [j for j in range(regions.shape[1]) if valid[b, j]]
        for j in idx:
            r2s = [torch.dot(regions[b, j], sentences[b, k]) / tau for k in idx]
            s2r = [torch.dot(sentences[b, j], regions[b, k]) / tau for k in idx]
            me = idx.index(j)
            rows_r2s.append(torch.log(sum(torch.exp(x) for x in r2s)) - r2s[me])
            rows_s2r.append(torch.log(sum(torch.exp(x) for x in s2r)) - s2r[me])
    return sum(rows_r2s) / len(rows_r2s) + sum(rows_s2r) / len(rows_s2r)


def _batch(seed, b=3, m=4, e=5):
    g = torch.Generator().manual_seed(seed)
    regions = 0.5 * torch.randn(b, m, e, generator=g)
    sentences = 0.5 * torch.randn(b, m, e, generator=g)
    valid = torch.rand(b, m, generator=g) < 0.7
    valid[0] = True
    valid[1] = torch.tensor([True, False, False, False])  # a scan with one anatomy: rows of loss 0
    valid[2, 0] = False
    return regions, sentences, valid


def test_matches_naive_loop_values_and_gradients():
    regions, sentences, valid = _batch(0)
    out = []
    for fn in (region_sentence_alignment_loss, naive_arsa):
        r, s = regions.clone().requires_grad_(), sentences.clone().requires_grad_()
        loss = fn(r, s, valid, torch.tensor(0.1))
        out.append((loss.detach(), *torch.autograd.grad(loss, [r, s])))
    for got, ref in zip(*out):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_absent_anatomies_do_not_matter():
    regions, sentences, valid = _batch(1)
    base = region_sentence_alignment_loss(regions, sentences, valid, 0.1)
    r, s = regions.clone(), sentences.clone()
    r[~valid] = 100.0  # garbage where the anatomy is absent
    s[~valid] = -100.0
    torch.testing.assert_close(region_sentence_alignment_loss(r, s, valid, 0.1), base)


def test_no_valid_anatomy_gives_zero_with_graph():
    regions, sentences, _ = _batch(2)
    regions.requires_grad_()
    loss = region_sentence_alignment_loss(regions, sentences, torch.zeros(3, 4, dtype=torch.bool), 0.1)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(regions.grad) == 0


def test_organ_identity_alone_drives_it_to_zero():
    """The shortcut ASG's digest warns of: one fixed vector per anatomy, the same in every scan
    and for normal and abnormal organs alike, solves ARSA as tau -> 0 (bench/arsa_shortcut.py)."""
    ident = torch.eye(4)[None].expand(6, 4, 4)  # organ identity, nothing about findings
    valid = torch.ones(6, 4, dtype=torch.bool)
    assert region_sentence_alignment_loss(ident, ident, valid, 0.01).item() < 1e-6

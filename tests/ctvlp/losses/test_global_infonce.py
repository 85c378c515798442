"""CLIP's global InfoNCE: a hand-computed case (value and analytic gradient), a naive per-sample
loop (values and gradients), symmetry, masking, and the two-rank gathered parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctvlp.losses.global_infonce import global_infonce_loss
from tests.ctvlp.gloo import run_ranks


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def _three_samples():
    """E = 2. img = (1,0), (0,1), (.6,.8); txt = (1,0), (0,1), (.8,.6).

    S[i, k] = <img_i, txt_k>:  row 0 [1, 0, .8],  row 1 [0, 1, .6],  row 2 [.6, .8, .96].
    """
    return (torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
            torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]]))


def test_hand_computed_value_and_gradient():
    img, txt = _three_samples()
    # i2t rows: lse(1, 0, .8) - 1 = 0.7824, lse(0, 1, .6) - 1 = 0.7121, lse(.6, .8, .96) - .96 = 0.9360
    # t2i cols: lse(1, 0, .6) - 1 = 0.7121, lse(0, 1, .8) - 1 = 0.7824, lse(.8, .6, .96) - .96 = 0.9360
    # loss = (sum of the six) / 2 / 3 = 0.8101
    i2t = [_lse([1, 0, .8]) - 1, _lse([0, 1, .6]) - 1, _lse([.6, .8, .96]) - .96]
    t2i = [_lse([1, 0, .6]) - 1, _lse([0, 1, .8]) - 1, _lse([.8, .6, .96]) - .96]
    expected = (sum(i2t) + sum(t2i)) / 2 / 3
    assert expected == pytest.approx(0.8101, abs=1e-4)
    a = img.clone().requires_grad_()
    loss = global_infonce_loss(a, txt, torch.tensor(1.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # analytic gradient: dL/dS_ik = (P_ik + Q_ik - 2 [i = k]) / (2 N), P = row softmax (i2t),
    # Q = column softmax (t2i); dL/dimg_i = sum_k dL/dS_ik txt_k / tau
    s = img @ txt.t()
    p, q = s.softmax(1), s.softmax(0)
    ds = (p + q - 2 * torch.eye(3)) / 6
    (grad,) = torch.autograd.grad(loss, a)
    torch.testing.assert_close(grad, ds @ txt, rtol=1e-5, atol=1e-6)


def naive_clip(img, txt, tau, valid):
    """Per-sample loop reference: both directions over the valid samples."""
    idx = [i for i in range(img.shape[0]) if valid[i]]
    terms = []
    for i in idx:
        row = torch.stack([img[i] @ txt[k] / tau for k in idx])
        col = torch.stack([img[k] @ txt[i] / tau for k in idx])
        pos = idx.index(i)
        terms.append(0.5 * (torch.logsumexp(row, 0) - row[pos]) + 0.5 * (torch.logsumexp(col, 0) - col[pos]))
    return sum(terms) / max(len(terms), 1)


def _random_batch(seed, B=7, E=5):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    txt = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    valid = torch.rand(B, generator=g) > 0.2
    valid[0] = valid[-1] = True  # each rank of the parity test keeps a valid sample
    return img, txt, valid


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_loop_values_and_gradients(seed):
    img, txt, valid = _random_batch(seed)
    out = []
    for fn in (global_infonce_loss, naive_clip):
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        loss = fn(a, b, 0.1, valid)
        out.append((loss.detach(), *torch.autograd.grad(loss, (a, b))))
    for got, ref in zip(out[0], out[1]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_symmetric_and_invalid_samples_take_no_part():
    img, txt, valid = _random_batch(2)
    torch.testing.assert_close(global_infonce_loss(img, txt, 0.07, valid), global_infonce_loss(txt, img, 0.07, valid))
    changed = img.clone()
    changed[~valid] = F.normalize(torch.randn(int((~valid).sum()), img.shape[1]), dim=-1)
    torch.testing.assert_close(global_infonce_loss(changed, txt, 0.07, valid), global_infonce_loss(img, txt, 0.07, valid))
    none = global_infonce_loss(img.requires_grad_(), txt, 0.07, torch.zeros_like(valid))
    assert none.item() == 0.0 and none.requires_grad


def test_bad_shapes_raise():
    img, txt, valid = _random_batch(3)
    with pytest.raises(ValueError, match=r"\[B, E\]"):
        global_infonce_loss(img[:, None], txt[:, None], 0.07)
    with pytest.raises(ValueError, match="valid"):
        global_infonce_loss(img, txt, 0.07, valid[:3])


SPLIT = 3  # rank 0 holds samples [0, 3), rank 1 [3, 7)


def _parity_body(rank, world, expected):
    img, txt, valid = _random_batch(4)
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    a, b = img[rows].clone().requires_grad_(), txt[rows].clone().requires_grad_()
    loss = global_infonce_loss(a, b, 0.1, valid[rows])
    loss.backward()
    loss_ref, ga, gb = expected
    torch.testing.assert_close(loss.detach(), loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, ga[rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, gb[rows], rtol=1e-5, atol=1e-6)


def test_two_rank_gathered_loss_equals_one_process(tmp_path):
    img, txt, valid = _random_batch(4)
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    loss = global_infonce_loss(a, b, 0.1, valid)
    loss.backward()
    run_ranks(_parity_body, tmp_path, (loss.detach(), a.grad, b.grad))

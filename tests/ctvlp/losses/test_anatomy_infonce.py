"""Eq. (1) anatomy-wise InfoNCE: hand-computed case, naive-loop parity (values and gradients),
symmetry, soft vs hard targets, masking, fVLM options, and the two-rank gathered parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctvlp.losses.anatomy_infonce import anatomy_infonce_loss, text_identity_keys
from tests.ctvlp.gloo import run_ranks

CONFIGS = [  # (targets, reduction, skip_without_abnormal)
    ("hard", "pairs", False),
    ("soft", "pairs", False),
    ("hard", "anatomy_sum", False),
    ("soft", "anatomy_sum", True),
    ("hard", "pairs", True),
]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def _three_samples():
    """One anatomy, E = 2, tau = 1. img = (1,0), (0,1), (.6,.8); txt = (1,0), (0,1), (.8,.6).

    Similarities S[i, k] = <img_i, txt_k>:
        row 0: [1.0, 0.0, 0.80]
        row 1: [0.0, 1.0, 0.60]
        row 2: [0.6, 0.8, 0.96]
    """
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])[:, None, :]
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])[:, None, :]
    return img, txt


def test_hand_computed_hard():
    img, txt = _three_samples()
    valid = torch.ones(3, 1, dtype=torch.bool)
    abnormal = torch.tensor([[0], [1], [0]])
    # i2t rows, lse(row) - S_ii:  lse(1, 0, .8) - 1 = 0.7824,  lse(0, 1, .6) - 1 = 0.7121,
    #           lse(.6, .8, .96) - .96 = 0.9360
    # t2i (columns of S): lse(1, 0, .6) - 1 = 0.7121,  lse(0, 1, .8) - 1 = 0.7824,
    #           lse(.8, .6, .96) - .96 = 0.9360
    # loss = mean over the 3 pairs of (i2t + t2i) / 2 = (0.7824 + 0.7121 + 0.9360) / 3 = 0.8101
    i2t = [_lse([1, 0, .8]) - 1, _lse([0, 1, .6]) - 1, _lse([.6, .8, .96]) - .96]
    t2i = [_lse([1, 0, .6]) - 1, _lse([0, 1, .8]) - 1, _lse([.8, .6, .96]) - .96]
    expected = sum(a + b for a, b in zip(i2t, t2i)) / 2 / 3
    assert expected == pytest.approx(0.8101, abs=1e-4)
    got = anatomy_infonce_loss(img, txt, valid, abnormal, torch.tensor(1.0))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # sample 2 not intact: a 2 x 2 problem, both directions lse(1, 0) - 1 = 0.3133
    valid[2, 0] = False
    got = anatomy_infonce_loss(img, txt, valid, abnormal, torch.tensor(1.0))
    assert got.item() == pytest.approx(_lse([1, 0]) - 1, rel=1e-6)


def test_hand_computed_soft():
    img, txt = _three_samples()
    valid = torch.ones(3, 1, dtype=torch.bool)
    abnormal = torch.tensor([[0], [1], [0]])  # samples 0 and 2 normal: positives of each other
    # targets rows 0 and 2: [.5, 0, .5]; row 1: [0, 1, 0]
    # i2t: lse(1, 0, .8) - (1 + .8)/2 = 0.8824;  row 1 as hard 0.7121;  lse(.6, .8, .96) - (.6 + .96)/2 = 1.1160
    # t2i: lse(1, 0, .6) - (1 + .6)/2 = 0.9121;  col 1 as hard 0.7824;  lse(.8, .6, .96) - (.8 + .96)/2 = 1.0160
    # loss = (0.8824 + 0.7121 + 1.1160 + 0.9121 + 0.7824 + 1.0160) / 6 = 0.9035
    i2t = [_lse([1, 0, .8]) - .9, _lse([0, 1, .6]) - 1, _lse([.6, .8, .96]) - .78]
    t2i = [_lse([1, 0, .6]) - .8, _lse([0, 1, .8]) - 1, _lse([.8, .6, .96]) - .88]
    expected = (sum(i2t) + sum(t2i)) / 6
    assert expected == pytest.approx(0.9035, abs=1e-4)
    got = anatomy_infonce_loss(img, txt, valid, abnormal, torch.tensor(1.0), targets="soft")
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # identical texts of samples 0 and 1 make them positives too (text identity term)
    key = torch.tensor([[7], [7], [9]])
    with_key = anatomy_infonce_loss(img, txt, valid, abnormal, torch.tensor(1.0), text_key=key,
                                    targets="soft")
    assert with_key.item() != pytest.approx(expected, rel=1e-3)


def naive_infonce(img, txt, valid, abnormal, tau, key=None, targets="hard", reduction="pairs",
                  skip=False):
    """Per-sample loop reference of eq. 1 with the documented options."""
    B, M, _ = img.shape
    pair_terms, anatomy_terms = [], []
    for j in range(M):
        idx = [i for i in range(B) if valid[i, j]]
        if skip and not any(int(abnormal[i, j]) for i in idx):
            continue
        terms = []
        for i in idx:
            def positive(k, i=i, j=j):
                if k == i:
                    return True
                if targets != "soft":
                    return False
                both_normal = int(abnormal[i, j]) == 0 and int(abnormal[k, j]) == 0
                same_text = key is not None and int(key[i, j]) == int(key[k, j])
                return both_normal or same_text
            pos = [k for k in idx if positive(k)]
            s_i2t = torch.stack([img[i, j] @ txt[k, j] / tau for k in idx])
            s_t2i = torch.stack([txt[i, j] @ img[k, j] / tau for k in idx])
            lse_i2t, lse_t2i = torch.logsumexp(s_i2t, 0), torch.logsumexp(s_t2i, 0)
            i2t = -sum(img[i, j] @ txt[p, j] / tau - lse_i2t for p in pos) / len(pos)
            t2i = -sum(txt[i, j] @ img[p, j] / tau - lse_t2i for p in pos) / len(pos)
            terms.append((i2t + t2i) / 2)
        pair_terms += terms
        if terms:
            anatomy_terms.append(sum(terms) / len(terms))
    if reduction == "pairs":
        return sum(pair_terms) / max(len(pair_terms), 1)
    return sum(anatomy_terms)


def _random_batch(seed: int, B: int = 6, M: int = 3, E: int = 5):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(B, M, E, generator=g), dim=-1)
    txt = F.normalize(torch.randn(B, M, E, generator=g), dim=-1)
    valid = torch.rand(B, M, generator=g) > 0.25
    valid[:2] = True
    abnormal = (torch.rand(B, M, generator=g) > 0.6).long()
    abnormal[:, 2] = 0  # anatomy 2 all normal: exercises the skip rule
    key = torch.randint(0, 3, (B, M), generator=g)
    return img, txt, valid, abnormal, key


@pytest.mark.parametrize("targets,reduction,skip", CONFIGS)
def test_matches_naive_loop_values_and_gradients(targets, reduction, skip):
    img, txt, valid, abnormal, key = _random_batch(0)
    tau = torch.tensor(0.3)
    grads = []
    for fn in (anatomy_infonce_loss, naive_infonce):
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        if fn is naive_infonce:
            loss = fn(a, b, valid, abnormal, tau, key, targets, reduction, skip)
        else:
            loss = fn(a, b, valid, abnormal, tau, text_key=key, targets=targets,
                      reduction=reduction, skip_without_abnormal=skip)
        grads.append((loss.detach(), *torch.autograd.grad(loss, [a, b])))
    for got, ref in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_symmetric_under_swapping_image_and_text(targets):
    img, txt, valid, abnormal, key = _random_batch(1)
    tau = torch.tensor(0.1)
    a = anatomy_infonce_loss(img, txt, valid, abnormal, tau, text_key=key, targets=targets)
    b = anatomy_infonce_loss(txt, img, valid, abnormal, tau, text_key=key, targets=targets)
    torch.testing.assert_close(a, b)


def test_soft_differs_from_hard():
    img, txt, valid, abnormal, _ = _random_batch(2)
    tau = torch.tensor(0.1)
    hard = anatomy_infonce_loss(img, txt, valid, abnormal, tau, targets="hard")
    soft = anatomy_infonce_loss(img, txt, valid, abnormal, tau, targets="soft")
    assert not torch.allclose(hard, soft)
    # 4 identical features, all normal: every logit is equal, so the softmax is uniform (1/4);
    # hard: -log(1/4); soft: targets uniform over the 4 normals, -sum 1/4 log(1/4) = log 4 too
    same = F.normalize(torch.ones(4, 1, 3), dim=-1)
    v, zeros = torch.ones(4, 1, dtype=torch.bool), torch.zeros(4, 1, dtype=torch.long)
    for t in ("hard", "soft"):
        loss = anatomy_infonce_loss(same, same, v, zeros, torch.tensor(0.1), targets=t)
        assert loss.item() == pytest.approx(math.log(4), rel=1e-5)


def test_no_intact_pair_gives_zero_with_graph():
    img, txt, _, abnormal, _ = _random_batch(3)
    img.requires_grad_()
    loss = anatomy_infonce_loss(img, txt, torch.zeros(6, 3, dtype=torch.bool), abnormal, 0.07)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(img.grad) == 0


def test_text_identity_keys():
    ids = torch.tensor([[[5, 6, 0]], [[5, 6, 7]], [[5, 6, 9]]])  # [B=3, M=1, T=3]
    mask = torch.tensor([[[1, 1, 0]], [[1, 1, 0]], [[1, 1, 1]]])
    keys = text_identity_keys(ids, mask)
    assert keys.shape == (3, 1) and keys.dtype == torch.int64
    assert keys[0, 0] == keys[1, 0]  # same real tokens, padding ignored
    assert keys[0, 0] != keys[2, 0]
    # token id 0 is not padding: [0] differs from the empty text
    z = text_identity_keys(torch.zeros(2, 1, 1, dtype=torch.long), torch.tensor([[[1]], [[0]]]))
    assert z[0, 0] != z[1, 0]


@pytest.mark.parametrize("bad", ["img_shape", "valid_shape", "targets"])
def test_bad_inputs_raise(bad):
    img, txt, valid, abnormal, _ = _random_batch(4)
    kwargs = {}
    if bad == "img_shape":
        txt = txt[:, :2]
    elif bad == "valid_shape":
        valid = valid[:, :2]
    else:
        kwargs["targets"] = "fuzzy"
    with pytest.raises(ValueError):
        anatomy_infonce_loss(img, txt, valid, abnormal, 0.07, **kwargs)


SPLIT = 4  # rank 0 holds samples [0, 4), rank 1 [4, 6): unequal shards


def _parity_body(rank, world, expected):
    img, txt, valid, abnormal, key = _random_batch(5)
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    for (targets, reduction, skip), (loss_ref, g_img, g_txt, g_tau) in zip(CONFIGS, expected):
        a, b = img[rows].clone().requires_grad_(), txt[rows].clone().requires_grad_()
        tau = torch.tensor(0.2, requires_grad=True)
        loss = anatomy_infonce_loss(a, b, valid[rows], abnormal[rows], tau, text_key=key[rows],
                                    targets=targets, reduction=reduction,
                                    skip_without_abnormal=skip)
        loss.backward()
        torch.testing.assert_close(loss.detach(), loss_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.grad, g_img[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.grad, g_txt[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tau.grad, g_tau, rtol=1e-5, atol=1e-6)


def test_two_rank_gathered_loss_equals_one_process(tmp_path):
    img, txt, valid, abnormal, key = _random_batch(5)
    expected = []
    for targets, reduction, skip in CONFIGS:
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        tau = torch.tensor(0.2, requires_grad=True)
        loss = anatomy_infonce_loss(a, b, valid, abnormal, tau, text_key=key, targets=targets,
                                    reduction=reduction, skip_without_abnormal=skip)
        loss.backward()
        expected.append((loss.detach(), a.grad, b.grad, tau.grad))
    run_ranks(_parity_body, tmp_path, expected)

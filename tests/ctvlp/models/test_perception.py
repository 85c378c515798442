"""Abnormality perception MLP: per-anatomy weights, both layouts agree, activation option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctvlp.models.perception import AbnormalityPerception


def _reference(p, orig, recon, anatomy):
    """Token-by-anatomy loop with the formula of sec. 3.3.2."""
    out = torch.empty_like(orig)
    for n in range(orig.shape[0]):
        j = int(anatomy[n])
        h = torch.cat([orig[n], recon[n]], -1) @ p.w1[j] + p.b1[j]
        h = F.gelu(h) if p.activation == "gelu" else h
        out[n] = h @ p.w2[j] + p.b2[j]
    return out


@pytest.mark.parametrize("activation", ["gelu", "none"])
def test_packed_matches_reference_and_dense(activation):
    torch.manual_seed(0)
    p = AbnormalityPerception(3, 8, activation=activation)
    orig, recon = torch.randn(6, 5, 8), torch.randn(6, 5, 8)
    anatomy = torch.tensor([2, 0, 1, 2, 0, 1])
    got = p(orig, recon, anatomy)
    torch.testing.assert_close(got, _reference(p, orig, recon, anatomy))
    # anatomy-major dense layout [B=2, M=3, L, C]: sample b, anatomy m
    order = torch.tensor([1, 2, 0, 4, 5, 3])  # rows sorted so anatomy = [0, 1, 2, 0, 1, 2]
    dense = p.forward_dense(orig[order].view(2, 3, 5, 8), recon[order].view(2, 3, 5, 8))
    torch.testing.assert_close(dense.reshape(6, 5, 8), got[order])
    # a per-token index gives the same as the per-instance one
    torch.testing.assert_close(p(orig, recon, anatomy[:, None].expand(6, 5)), got)


def test_none_is_affine_and_gradients_flow():
    torch.manual_seed(0)
    p = AbnormalityPerception(2, 4, activation="none")
    x, r = torch.randn(3, 4), torch.randn(3, 4)
    a = torch.tensor([1, 1, 1])
    # affine: f(2x) - f(x) = f(x) - f(0)
    lhs = p(2 * x, 2 * r, a) - p(x, r, a)
    rhs = p(x, r, a) - p(0 * x, 0 * r, a)
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-5)
    p(x, r, a).sum().backward()
    assert p.w1.grad[0].abs().sum() == 0 and p.w1.grad[1].abs().sum() > 0  # only anatomy 1 used


@pytest.mark.parametrize("bad", ["activation", "shape", "anatomy"])
def test_bad_inputs_raise(bad):
    with pytest.raises(ValueError):
        if bad == "activation":
            AbnormalityPerception(2, 4, activation="relu6")
        p = AbnormalityPerception(2, 4)
        x = torch.randn(3, 4)
        if bad == "shape":
            p(x, torch.randn(3, 5), torch.tensor([0, 1, 0]))
        else:
            p(x, x, torch.tensor([0, 1, 2]))

"""MomentumEncoder: EMA of parameters and float buffers, frozen, no autograd graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctvlp.models.momentum import MomentumEncoder


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.995, 1.0])
def test_ema_step(decay):
    online = _net()
    mom = MomentumEncoder(online, decay=decay)
    start = {k: v.clone() for k, v in mom.module.state_dict().items()}
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online.train()(torch.randn(8, 3))  # moves BN running stats and num_batches_tracked
    mom.update(online)
    for name, cur in online.state_dict().items():
        got = mom.module.state_dict()[name]
        if cur.is_floating_point():
            torch.testing.assert_close(got, decay * start[name] + (1 - decay) * cur)
        else:
            assert torch.equal(got, cur)  # integer buffers are copied


def test_frozen_and_no_graph():
    online = _net()
    mom = MomentumEncoder(online)
    assert all(not p.requires_grad for p in mom.parameters())
    out = mom(torch.randn(5, 3))
    assert not out.requires_grad
    with pytest.raises(ValueError):
        MomentumEncoder(online, decay=1.5)

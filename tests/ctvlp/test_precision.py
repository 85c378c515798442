"""The precision contract (docs/DESIGN.md, "Precision"), on CPU with the GPU path's configuration.

The GPU path is ``TrainConfig(bf16=True)`` as ``train_config_from_spec`` builds it when
``resources.bf16`` is on: the same DeepSpeed config and ``train_step`` a GPU worker runs, so these
tests exercise it on CPU (bf16 speed on CPU says nothing about a GPU; correctness and dtypes do).
"""

from __future__ import annotations

import pytest
import torch

from ctvlp import golden
from ctvlp.loop import TrainConfig, build_engine, ensure_process_group, train_step
from ctvlp.tasks import build_task


@pytest.fixture(scope="module")
def process_group():
    ensure_process_group()  # left in place: DeepSpeed keeps the first group of the process


def _bf16_engine(task, *, lr: float = 1e-3, zero_stage: int = 1, steps: int = 10):
    cfg = TrainConfig(epochs=1, global_batch_size=4, lr=lr, min_lr=0.0, warmup_epochs=0.0, bf16=True,
                      zero_stage=zero_stage)
    return cfg, build_engine(task.module, cfg, steps_per_epoch=steps)


def test_momentum_encoder_moves_as_the_ema_formula_says_in_bf16(process_group):
    """After n EMA updates towards a fixed online encoder theta, the momentum copy has moved by
    (1 - d^n) (theta - theta_0), computed in float32, within 5 %. A gap of 1 % of each weight's
    scale is realistic between an encoder and its EMA; at d = 0.995 one update is 5e-5 of the
    weight, below bf16's resolution (2^-8 = 4e-3), so bf16 momentum weights would never move."""
    torch.manual_seed(0)
    task = build_task(golden.golden_spec(1), 1, init={})
    _bf16_engine(task)
    online, ema = task.module["vision"], task.module["momentum"]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in online.parameters():
            if p.is_floating_point() and p.numel() > 1:
                scale = p.detach().float().std().clamp_min(1e-3)
                p.add_((0.01 * scale * torch.randn(p.shape, generator=gen)).to(p.dtype))
    theta0 = {k: v.detach().float().clone() for k, v in ema.module.named_parameters()}
    theta = {k: v.detach().float().clone() for k, v in online.named_parameters()}
    n, d = 20, ema.decay
    for _ in range(n):
        task.after_step()
    num = den = 0.0
    for k, v in ema.module.named_parameters():
        moved = v.detach().float() - theta0[k]
        expected = (1 - d ** n) * (theta[k] - theta0[k])
        num += float((moved - expected).pow(2).sum())
        den += float(expected.pow(2).sum())
    rel = (num / den) ** 0.5
    assert rel < 0.05, f"momentum displacement off by {rel:.1%} of (1 - d^n)(theta - theta_0)"

"""Momentum (EMA) copy of a module, the key encoder of eq. (2) (MoCo, He et al. CVPR 2020; BLIP).

ViSD-Boost does not state the momentum; its released ``VISDBOOST.__init__`` carries
``momentum=0.995`` (the BLIP default), which is our default (``spec.model.momentum``).

Built on ``torch.optim.swa_utils.AveragedModel`` (the PyTorch EMA utility) rather than a
hand-written loop. Two details differ from its defaults, for the reasons given inline:
the first update is already an EMA step, and integer buffers are copied, not averaged.

Precision (docs/DESIGN.md): the EMA copy is float32 like every weight (no DeepSpeed bf16 mode),
because one update at d = 0.995 moves a weight by ~5e-5 of itself, below bf16's resolution
(2^-8); the update runs after the optimiser step, outside autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["MomentumEncoder"]


def _ema_multi_avg_fn(decay: float):
    """EMA over a group of same-dtype tensors; non-float groups (e.g. BN's
    ``num_batches_tracked``) are copied, since torch's ``get_ema_multi_avg_fn`` would average
    them in float and truncate."""

    @torch.no_grad()
    def update(ema: Sequence[torch.Tensor], cur: Sequence[torch.Tensor], _n: torch.Tensor) -> None:
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(list(ema), list(cur), 1.0 - decay)  # ema += (1-d) * (cur - ema)
        else:
            torch._foreach_copy_(list(ema), list(cur))

    return update


class MomentumEncoder(nn.Module):
    """A frozen EMA copy of ``online``: ``theta_m <- d * theta_m + (1 - d) * theta_online``.

    Parameters and floating buffers (BatchNorm running statistics) are averaged, as timm's
    ``ModelEmaV2``; no parameter of the copy requires grad, and :meth:`forward` runs without
    autograd. Call :meth:`update` after each optimiser step (``task.after_step``).

    Args:
        online: the module to follow (e.g. vision encoder + anatomy pooling).
        decay: EMA decay d in [0, 1] (0.995 default; 0 copies, 1 freezes).
    """

    def __init__(self, online: nn.Module, decay: float = 0.995) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.ema = AveragedModel(online, multi_avg_fn=_ema_multi_avg_fn(decay), use_buffers=True)
        self.ema.requires_grad_(False)
        # AveragedModel copies (no averaging) on its first update; the copy is already equal to
        # the online module here, so start the counter at 1 and make update 1 a true EMA step.
        self.ema.n_averaged.fill_(1)

    @property
    def module(self) -> nn.Module:
        """The EMA copy itself."""
        return self.ema.module

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """One EMA step towards ``online``'s current parameters and buffers."""
        self.ema.update_parameters(online)

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        """Run the EMA copy (no autograd graph); the mode (train/eval) follows ``self.training``."""
        return self.ema.module(*args, **kwargs)

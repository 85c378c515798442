"""The task interface shared by the four phases (open_clip's ``task/`` idea).

A task owns its model parts in one ``nn.ModuleDict`` (``task.module``: what DeepSpeed wraps and
what checkpoints hold), declares the batch keys it reads, and turns a batch into named losses
and metrics. The single training loop (:mod:`ctvlp.loop`) sums the entries whose key ends with
``_loss`` and never branches on the phase.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ctvlp.config import JobSpec, settable_dict
from ctvlp.export import load_part, save_parts
from ctvlp.models.text import LearnableTemperature

Losses = dict[str, torch.Tensor]
Metrics = dict[str, float]


class Task:
    """Base class. Subclasses set ``phase``, ``required_keys``, ``export_parts`` and build
    ``self.module`` in ``__init__``; they implement :meth:`training_step`."""

    phase: int = 0
    required_keys: tuple[str, ...] = ()
    export_parts: tuple[str, ...] = ()
    frozen_parts: tuple[str, ...] = ()  # parts kept in eval mode with requires_grad False

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.num_anatomies = spec.data.num_anatomies
        self.module = nn.ModuleDict()

    # ------------------------------------------------------------------ the loop's interface
    def training_step(self, batch: dict[str, torch.Tensor]) -> tuple[Losses, Metrics]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step: projects every learnable temperature back into its
        [min, max] (fVLM clamps after each step; ``LearnableTemperature``). Subclasses that add
        work (the momentum EMA) call this first."""
        for m in self.module.modules():
            if isinstance(m, LearnableTemperature):
                m.clamp_()

    def train(self, mode: bool = True) -> "Task":
        """Train mode for trainable parts; frozen parts stay in eval mode (no dropout/EMA)."""
        self.module.train(mode)
        for name in self.frozen_parts:
            if name in self.module:
                self.module[name].eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        missing = [k for k in self.required_keys if k not in batch]
        if missing:
            raise KeyError(f"phase {self.phase} needs batch keys {missing}; got {sorted(batch)}")

    # ---------------------------------------------------------------------- weights in / out
    def freeze(self, name: str) -> None:
        for p in self.module[name].parameters():
            p.requires_grad_(False)
        self.module[name].eval()

    def load_init(self, part: str, uri: str | Path, source_part: str | None = None) -> None:
        """Strictly load ``part`` from an export directory (a local path; the runner fetches
        remote exports first)."""
        load_part(self.module[part], part, uri, source_part)

    def export(self, out_dir: str | Path) -> Path:
        """Write this phase's parts as safetensors + config.json (with the settable spec)."""
        config = {"phase": self.phase, "spec": settable_dict(self.spec)}
        return save_parts(self.module, self.export_parts, out_dir, config)


def total_loss(losses: Losses) -> torch.Tensor:
    """Sum of the entries whose key ends with ``_loss`` (the loop's objective)."""
    terms = [v for k, v in losses.items() if k.endswith("_loss")]
    if not terms:
        raise ValueError(f"a task returned no '*_loss' entry: {sorted(losses)}")
    return torch.stack([t.float() for t in terms]).sum()

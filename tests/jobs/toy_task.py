"""A tiny Task (same API as ``ctvlp.tasks``) and dataset for testing the runner independently.

The model is a 3D conv net regressing ``y = 10 * mean(x)`` from ``x`` ``[1, 8, 8, 8]``: it learns
in a few dozen steps on CPU, so "the loss went down" and "resumed equals uninterrupted" are
measurable in seconds. ``kill_at_call`` makes rank 0's process SIGKILL itself once (when the
marker file is absent) to simulate a lost worker.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from ctvlp.loop import export_safetensors

TOY_FACTORY = "tests.jobs.toy_task:build_toy_task"


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows {x: float32 [1, 8, 8, 8], y: float32} with y = 10 * mean(x)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8, 8), dtype=np.float32)
    y = 10.0 * x.reshape(n, -1).mean(axis=1)
    return [{"x": x[i], "y": np.float32(y[i])} for i in range(n)]


class ToyNet(nn.Module):
    """Conv net + a 0-dim learnable output scale (like the tasks' learnable temperatures)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
                                  nn.Flatten(), nn.Linear(4, 1))
        self.scale = nn.Parameter(torch.tensor(1.0))  # 0-dim: exercises loop._broadcast_scalar_params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale


def toy_module() -> nn.Module:
    return ToyNet()


class ToyTask:
    required_keys = ("x", "y")

    def __init__(self, seed: int = 0, kill_at_call: int | None = None, marker: str | None = None,
                 init_from: str | None = None, valid_script: list[float] | None = None) -> None:
        torch.manual_seed(seed)
        self.module = toy_module()
        if init_from:  # phase chaining: start from an earlier phase's export (safetensors)
            from ctvlp.loop import load_safetensors

            load_safetensors(self.module, Path(init_from) / "model.safetensors")
        self.kill_at_call, self.marker = kill_at_call, marker
        self.calls = 0
        self.after_calls = 0
        # valid_script[r]: the validation loss reported in validation round r (scripted peaks)
        self.valid_script, self._valid_rounds, self._valid_at = valid_script, 0, None

    def _maybe_die(self) -> None:
        rank = dist.get_rank() if dist.is_initialized() else 0
        if self.kill_at_call is None or rank != 0 or self.calls != self.kill_at_call:
            return
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text("killed once\n")
            # Train V2 registers a reported checkpoint when its controller next polls the workers
            # (every 2 s); die after that, as a worker lost mid-phase would, so that the resume
            # point is deterministic for the test.
            time.sleep(6)
            os.kill(os.getpid(), signal.SIGKILL)

    def training_step(self, batch):
        self.calls += 1
        self._maybe_die()
        pred = self.module(batch["x"]).squeeze(-1)
        loss = F.mse_loss(pred.float(), batch["y"].float())
        return {"mse_loss": loss}, {"pred_mean": float(pred.detach().float().mean())}

    def after_step(self) -> None:
        self.after_calls += 1

    def validation_step(self, batch):
        if self.valid_script is None:
            return self.training_step(batch)
        if self._valid_at != self.after_calls:  # a new validation round (after more steps)
            self._valid_rounds, self._valid_at = self._valid_rounds + 1, self.after_calls
        return {"mse_loss": torch.tensor(self.valid_script[self._valid_rounds - 1])}, {}

    def export(self, out_dir) -> None:
        export_safetensors(self.module, out_dir, {"kind": "toy"})


def build_toy_task(spec, phase: int, init: dict | None = None, **kwargs) -> ToyTask:
    """Factory with the ``build_task(spec, phase, init)`` signature; ``spec`` may be None.
    ``init["vision_encoder"]`` (a local export dir) stands for "start from that phase's model"."""
    seed = getattr(spec, "seed", 0) if spec is not None else 0
    return ToyTask(seed=seed, init_from=(init or {}).get("vision_encoder"), **kwargs)


def toy_eval_mse(weights_dir: str | Path, rows: list[dict]) -> float:
    """MSE over ``rows`` of the model exported to ``weights_dir`` (safetensors, no pickle)."""
    from ctvlp.loop import load_safetensors

    module = load_safetensors(toy_module(), Path(weights_dir) / "model.safetensors")
    x = torch.from_numpy(np.stack([r["x"] for r in rows]))
    y = torch.tensor([float(r["y"]) for r in rows])
    with torch.no_grad():
        return float(F.mse_loss(module(x).squeeze(-1), y))

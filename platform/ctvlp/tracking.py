"""Run metrics: console lines at rank 0 and TensorBoard event files (the one tracking backend).

Per step the runner logs: every loss term and their sum, ``lr``, ``grad_norm``, ``samples_per_s``
(global: all workers), ``data_wait_frac`` (share of the step's wall time spent waiting for the
next batch) and memory (``mem_alloc_mb``/``mem_peak_mb`` of the GPU, or the process RSS on CPU).
View with ``tensorboard --logdir <run dir>/tensorboard``.

TensorBoard is chosen over MLflow because it needs no server or database: event files are
plain files written beside the checkpoints (or synced there when storage is S3).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Mapping

import torch


class StepTimer:
    """Splits each step's wall time into waiting for data and the rest.

    Usage per step: ``timer.data_ready()`` when the batch arrived, ``timer.step_done()`` after
    the optimiser step; ``step_done`` returns ``(step_seconds, data_wait_fraction)``.
    """

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._wait = 0.0

    def restart(self) -> None:
        """Start a fresh interval (after a checkpoint, an epoch boundary or a skip)."""
        self._last = time.perf_counter()
        self._wait = 0.0

    def data_ready(self) -> None:
        self._wait = time.perf_counter() - self._last

    def step_done(self) -> tuple[float, float]:
        now = time.perf_counter()
        seconds = max(now - self._last, 1e-9)
        frac = min(1.0, self._wait / seconds)
        self._last, self._wait = now, 0.0
        return seconds, frac


def memory_mb(device: torch.device) -> dict[str, float]:
    """Memory figures in MiB: CUDA allocated and peak allocated, or the process's RSS and peak RSS."""
    if device.type == "cuda":
        return {
            "mem_alloc_mb": torch.cuda.memory_allocated(device) / 2**20,
            "mem_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20,
        }
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = {"mem_peak_mb": peak_kb / 1024}
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        out["mem_rss_mb"] = pages * resource.getpagesize() / 2**20
    except (OSError, IndexError, ValueError):  # not Linux: peak only
        pass
    return out


class MetricsTracker:
    """Writes scalars to TensorBoard and prints every ``console_every`` steps; inert when disabled.

    Args:
        log_dir: TensorBoard event-file directory (created); None = console only.
        enabled: False on every rank but 0, so that workers do not write duplicate events.
        console_every: print cadence in steps (0 = never print).
    """

    def __init__(self, log_dir: str | Path | None, *, enabled: bool = True, console_every: int = 10) -> None:
        if console_every < 0:
            raise ValueError(f"console_every must be >= 0, got {console_every}")
        self.enabled = enabled
        self.console_every = console_every
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer = None
        if enabled and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, step: int, scalars: Mapping[str, float], *, prefix: str = "train") -> None:
        """Record ``scalars`` at global step ``step`` (non-finite values are kept: they are news)."""
        if not self.enabled:
            return
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(f"{prefix}/{key}", float(value), global_step=step)
        if self.console_every and step % self.console_every == 0:
            body = " ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())
            print(f"[{prefix} step {step}] {body}", file=sys.stdout, flush=True)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _fmt(value: float) -> str:
    value = float(value)
    return f"{value:.3e}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) else f"{value:.4g}"

"""Run metrics: console lines at rank 0 and TensorBoard event files (the one tracking backend).

Per step the runner logs: every loss term and their sum, ``lr``, ``grad_norm``, ``samples_per_s``
(global: all workers), ``data_wait_frac`` (share of the step's wall time spent waiting for the
next batch) and memory (``mem_alloc_mb``/``mem_peak_mb`` of the GPU, or the process RSS on CPU).
View with ``tensorboard --logdir <run dir>/tensorboard``.

The console gets one line per ``console_every`` steps (and the first and each epoch's last step),
laid out by :class:`Progress` so that a person can follow a phase::

    [phase2] step 20/132 (15%) | epoch 1/4 | 3.91 samples/s | ETA 5m12s | loss=2.271 itc_loss=2.271 lr=1.254e-04 ...

TensorBoard is chosen over MLflow because it needs no server or database: event files are
plain files written beside the checkpoints (or synced there when storage is S3).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # torch is imported where it is used: ingest's driver formats ETAs without it
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
        import torch

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


def format_duration(seconds: float) -> str:
    """12 -> '12s', 312 -> '5m12s', 7260 -> '2h01m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_line(label: str, done: int, total: int, seconds: float, unit: str) -> str:
    """'[label] 120/314 scans (38%) | 2.1 scans/s | ETA 1m32s' after ``seconds`` of work."""
    rate = done / seconds if seconds > 0 else float("nan")
    eta = format_duration((total - done) / rate) if done and rate == rate else "-"
    return f"[{label}] {done}/{total} {unit} ({100 * done / max(total, 1):.0f}%) | {rate:.3g} {unit}/s | ETA {eta}"


class Progress:
    """Where a phase is and when it ends: the head of each console line.

    Args:
        label: e.g. "phase2". epochs / steps_per_epoch: the phase's plan (total = their product).
        samples_per_step: the global batch. start_step: the step this process starts from (a
            resumed run's), so the ETA counts only steps timed here.

    The rate is measured between printed lines (samples/s of the steps since the last line), the
    ETA from the mean wall time per step since the start (checkpoints and validation included).
    """

    def __init__(self, label: str, epochs: int, steps_per_epoch: int, samples_per_step: int,
                 start_step: int = 0) -> None:
        self.label, self.epochs, self.steps_per_epoch = label, epochs, steps_per_epoch
        self.total = epochs * steps_per_epoch
        self.samples_per_step = samples_per_step
        self._start = (start_step, time.perf_counter())
        self._last = self._start

    def due(self, step: int, every: int) -> bool:
        """Print at ``step``? Every ``every`` steps, the first, each epoch's last (0 = never)."""
        return bool(every) and (step % every == 0 or step == self._start[0] + 1 or step % self.steps_per_epoch == 0)

    def line(self, step: int, scalars: Mapping[str, float]) -> str:
        now = time.perf_counter()
        (s0, t0), (s1, t1) = self._start, self._last
        rate = (step - s1) * self.samples_per_step / max(now - t1, 1e-9) if step > s1 else float("nan")
        eta = (now - t0) / (step - s0) * (self.total - step) if step > s0 else float("nan")
        self._last = (step, now)
        epoch = min((step - 1) // self.steps_per_epoch + 1, self.epochs) if step else 1
        body = " ".join(f"{k}={_fmt(v)}" for k, v in scalars.items() if k not in ("epoch", "samples_per_s"))
        return (f"[{self.label}] step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) | "
                f"epoch {epoch}/{self.epochs} | {rate:.3g} samples/s | "
                f"ETA {format_duration(eta) if eta == eta else '-'} | {body}")


class MetricsTracker:
    """Writes scalars to TensorBoard and prints every ``console_every`` steps; inert when disabled.

    Args:
        log_dir: TensorBoard event-file directory (created); None = console only.
        enabled: False on every rank but 0, so that workers do not write duplicate events.
        console_every: print cadence in steps (0 = never print).
        progress: lays out the console lines (step/total, epoch/total, samples/s, ETA) and adds
            the first and each epoch's last step; None: ``[train step N] key=value ...``.
    """

    def __init__(self, log_dir: str | Path | None, *, enabled: bool = True, console_every: int = 10,
                 progress: Progress | None = None) -> None:
        if console_every < 0:
            raise ValueError(f"console_every must be >= 0, got {console_every}")
        self.enabled = enabled
        self.console_every = console_every
        self.progress = progress
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer = None
        if enabled and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, step: int, scalars: Mapping[str, float], *, prefix: str = "train", console: bool = True) -> None:
        """Record ``scalars`` at global step ``step`` (non-finite values are kept: they are news);
        ``console=False`` writes TensorBoard only."""
        if not self.enabled:
            return
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(f"{prefix}/{key}", float(value), global_step=step)
        if not console:
            return
        if prefix != "train" or self.progress is None:
            if self.console_every and step % self.console_every == 0:
                body = " ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())
                print(f"[{prefix} step {step}] {body}", file=sys.stdout, flush=True)
        elif self.progress.due(step, self.console_every):
            print(self.progress.line(step, scalars), file=sys.stdout, flush=True)

    def console(self, text: str) -> None:
        """One line on the console (rank 0 only), e.g. a validation result."""
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

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

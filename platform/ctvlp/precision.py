"""The precision contract in code (docs/DESIGN.md, "Precision").

Weights, gradients, optimiser state and every buffer are float32. With ``resources.bf16`` on
(``TrainConfig.bf16``), the loop runs each task's forward under ``torch.autocast(bfloat16)``: the
matmul-class ops (convolutions, linear layers, attention, einsum/matmul) compute in bf16 from
float32 weights, everything else in float32. Regions whose numbers must not lose bits leave
autocast through :func:`float32_compute`: the losses (logits, softmax cross-entropy, the
temperature division), the VQ codebook search and its EMA statistics. The momentum encoder's EMA
runs on float32 weights outside the forward. Exports are float32 (``ctvlp.export.save_parts``).

Why autocast on float32 weights instead of DeepSpeed's ``bf16`` mode (bf16 module weights with
fp32 master copies in the optimiser): that mode casts *every* parameter of the wrapped module to
bf16, frozen parts included, so the momentum encoder's update (5e-5 of a weight at d = 0.995)
rounds to nothing below bf16's resolution (2^-8), frozen VQ-VAE and encoder parts meet float32
inputs with bf16 weights ("expected scalar type BFloat16 but found Float"), and exports inherit
bf16 unless every writer casts. Keeping fp32 copies of those parts by hand would be a second
mechanism. Autocast is DeepSpeed's own ``torch_autocast`` mode, which we configure with no
lower-precision modules, so that gradients are reduced in float32 (gloo and NCCL alike) and
accumulate in float32. The memory cost is 2 bytes more per parameter for the module copy (the
ViSD encoder is ~30 M parameters: 60 MB), against activations of several GB per 96x256x384 crop,
which are bf16 either way.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

BF16 = torch.bfloat16


def _to_float32(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
        return x.float()
    return x


@contextlib.contextmanager
def autocast_off(*tensors: torch.Tensor) -> Iterator[None]:
    """Leave any active autocast region (on the tensors' device type) for the body."""
    device_types = {t.device.type for t in tensors} or {"cpu"}
    with contextlib.ExitStack() as stack:
        for device_type in device_types | {"cpu"}:
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def float32_compute(fn: F) -> F:
    """Run ``fn`` outside autocast with its floating tensor arguments cast to float32.

    For losses and statistics: under ``torch.autocast(bfloat16)`` a matmul of float32 inputs still
    computes in bf16 (8 bits of mantissa), which is too coarse for logits divided by a 0.07
    temperature or for nearest-code distances. Outputs are float32.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        with autocast_off(*tensors):
            return fn(*(_to_float32(a) for a in args), **{k: _to_float32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


def resolve_bf16(setting: str | bool, cuda: bool) -> bool:
    """``resources.bf16`` ("auto" | bool) on a device: "auto" is on exactly where CUDA is."""
    if setting == "auto":
        return bool(cuda)
    if not isinstance(setting, bool):
        raise ValueError(f"resources.bf16 must be 'auto', true or false, got {setting!r}")
    return setting


def bf16_autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """The training and evaluation forward's autocast region (a no-op when not ``enabled``)."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=BF16, enabled=enabled)

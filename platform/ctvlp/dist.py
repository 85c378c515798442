"""Cross-rank helpers for the contrastive losses and the VQ codebook (torch.distributed only).

Every function is a no-op (identity) when ``torch.distributed`` is not initialised, so the same
loss code runs in a single CPU process, under Ray Train's DDP/DeepSpeed workers, and in tests with
a two-process gloo group.

Gradient convention of :func:`gather_with_grad`: the returned global tensor keeps the autograd
graph of the *local* shard only (the other ranks' rows are constants). When every rank evaluates
the same *global* loss on the gathered tensors, the gradient reaching the local rows is exactly
d(global loss)/d(local rows), i.e. what one process would compute on the concatenated batch (the
two-process test checks this). The data-parallel wrapper then *averages* parameter gradients over
ranks, so the parameter update is ``1/world_size`` of the one-process big-batch gradient; this
is the convention of BLIP/fVLM (``concat_all_gather`` + local graph) and of open_clip's default
(``gather_with_grad=False``). Adam is nearly invariant to that constant; multiply the loss by
:func:`world_size` if an exact match of the big-batch gradient is wanted.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_initialized", "world_size", "rank", "gather_with_grad", "all_reduce_sum_"]


def is_initialized() -> bool:
    """True when a default process group exists (``dist.init_process_group`` was called)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks in the default group; 1 without torch.distributed."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group; 0 without torch.distributed."""
    return dist.get_rank() if is_initialized() else 0


def _all_gather_sizes(n: int, device: torch.device) -> list[int]:
    """All ranks' first-dimension sizes, in rank order."""
    local = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0; the local shard keeps its gradient.

    Args:
        x: ``[N_r, ...]`` local shard. ``N_r`` may differ across ranks (e.g. the number of
            normal anatomies of a rank); the trailing dims and the dtype must agree.

    Returns:
        ``[sum_r N_r, ...]``: the shards concatenated in rank order. Rows of other ranks are
        detached; the rows of this rank are ``x`` itself (same autograd graph). Without
        torch.distributed, ``x`` is returned unchanged.

    Implementation: sizes are gathered first, every shard is zero-padded to the largest size
    (``dist.all_gather`` needs equal shapes), gathered, and trimmed. ``torch.distributed.nn``'s
    differentiable all_gather is not used: it requires equal sizes and sums gradients over ranks,
    which is not the convention documented in the module docstring. Bool tensors travel as uint8
    (gloo has no bool all_gather).
    """
    if not is_initialized() or world_size() == 1:
        return x
    sizes = _all_gather_sizes(x.shape[0], x.device)
    n_max = max(sizes)
    wire = x.detach()
    if wire.dtype == torch.bool:
        wire = wire.to(torch.uint8)
    if wire.shape[0] < n_max:
        pad = wire.new_zeros((n_max - wire.shape[0], *wire.shape[1:]))
        wire = torch.cat([wire, pad], dim=0)
    buckets = [torch.empty_like(wire) for _ in sizes]
    dist.all_gather(buckets, wire.contiguous())
    shards = [b[:n].to(x.dtype) for b, n in zip(buckets, sizes, strict=True)]
    shards[rank()] = x  # keep the local graph
    return torch.cat(shards, dim=0)


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place and return it; identity without torch.distributed."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t

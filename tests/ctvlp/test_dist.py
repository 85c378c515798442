"""ctvlp.dist: identity without a process group; gather/all-reduce semantics on two gloo ranks."""

from __future__ import annotations

import torch

from ctvlp import dist
from tests.ctvlp.gloo import run_ranks


def test_single_process_is_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.world_size() == 1 and dist.rank() == 0  # no group, or a 1-process one (other tests)
    assert dist.gather_with_grad(x) is x
    t = torch.ones(4)
    assert dist.all_reduce_sum_(t) is t and torch.equal(t, torch.ones(4))


def _shard(rank: int) -> torch.Tensor:
    # rank 0 holds 3 rows, rank 1 one row: unequal first dims must gather correctly
    n = 3 if rank == 0 else 1
    return torch.arange(n * 2, dtype=torch.float32).view(n, 2) + 100 * rank


def _gather_body(rank: int, world: int) -> None:
    assert dist.world_size() == world and dist.rank() == rank
    x = _shard(rank).requires_grad_()
    g = dist.gather_with_grad(x)
    expected = torch.cat([_shard(r) for r in range(world)])
    assert torch.equal(g.detach(), expected)
    # gradient reaches only the local rows: d/dx sum(w * g) = w[local rows]
    w = torch.arange(expected.numel(), dtype=torch.float32).view_as(expected)
    (w * g).sum().backward()
    start = 0 if rank == 0 else 3
    assert torch.equal(x.grad, w[start:start + x.shape[0]])
    # bool and int64 travel intact; an empty shard is fine
    flags = torch.tensor([True, False, True]) if rank == 0 else torch.zeros(0, dtype=torch.bool)
    assert dist.gather_with_grad(flags).tolist() == [True, False, True]
    ids = torch.tensor([2**40 + rank])
    assert dist.gather_with_grad(ids).tolist() == [2**40, 2**40 + 1]
    t = torch.full((2,), float(rank + 1))
    dist.all_reduce_sum_(t)
    assert torch.equal(t, torch.full((2,), 3.0))


def test_two_rank_gather_and_all_reduce(tmp_path):
    run_ranks(_gather_body, tmp_path)

"""Run a test body on two CPU ranks of a gloo process group (torch.multiprocessing, fork).

The body is ``fn(rank, world_size, *args)``, a module-level function of the test module (it is
pickled by reference). An assertion error on either rank fails the calling test.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn, init_file: str, world: int, args: tuple) -> None:
    torch.set_num_threads(1)  # two ranks on a shared 2-core machine
    if dist.is_initialized():  # inherited through fork from a test process that holds a group
        dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, tmp_path: Path, *args, world: int = 2) -> None:
    """Spawn ``world`` processes running ``fn(rank, world, *args)`` and wait for them."""
    init_file = tmp_path / f"pg-{os.getpid()}-{fn.__name__}"
    # fork: the children inherit the imported torch instead of re-importing it (seconds each on
    # a loaded CI machine); safe here because the bodies only use CPU tensors and gloo
    mp.start_processes(_entry, args=(fn, str(init_file), world, args), nprocs=world, join=True,
                       start_method="fork")

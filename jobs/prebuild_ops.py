"""Compile DeepSpeed's JIT C++ ops once, so that training jobs and tests do not pay for it.

DeepSpeed 0.19 on a CPU-only machine JIT-compiles its shared-memory all-reduce op
(``deepspeed_shm_comm``, ~50 s with g++/ninja) the first time a process group is set up. The
compiled ``.so`` is cached in ``TORCH_EXTENSIONS_DIR``; ``jobs.common.torch_extensions_dir``
points that at ``.venv/torch_extensions`` so the cache lives and dies with the environment.

We pass a torch AdamW with ``zero_allow_untested_optimizer`` (``ctvlp.loop.build_engine``), so
DeepSpeed's fused Adam is never needed and not built here. GPU images need nothing from this:
with CUDA the NCCL backend is used and no op is compiled.

Usage: ``python jobs/prebuild_ops.py`` (called by ``make install``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from jobs.common import torch_extensions_dir  # noqa: E402


def main() -> int:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(torch_extensions_dir()))
    import torch

    if torch.cuda.is_available():
        print("CUDA present: DeepSpeed uses NCCL, no CPU comm op to build.")
        return 0
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    builder = ShareMemCommBuilder()
    if not builder.is_compatible():
        print("deepspeed_shm_comm is not compatible here; DeepSpeed will use plain gloo.")
        return 0
    t0 = time.perf_counter()
    builder.load(verbose=False)
    print(
        f"deepspeed_shm_comm ready in {os.environ['TORCH_EXTENSIONS_DIR']} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

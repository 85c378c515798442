"""Anatomy token flags: ``ctvlp.models.tokens.anatomy_token_flags`` vs the released definition.

The released code builds a one-hot mask [B, M, D, H, W] and max-pools it with kernel = stride at
every level. ``anatomy_token_flags`` scatters each voxel's (anatomy, block) pair once at the finest
level and derives the coarser levels from it. Both run here in one process on the same masks;
the figure that matters is the ratio. The baseline is the plain definition (one max-pool per
level over the whole one-hot), so the two are also checked to agree.

Usage: ``python bench/token_flags.py [--repeats 10]`` -> bench/results/token_flags.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from ctvlp.models.resnet3d import STAGE_STRIDES  # noqa: E402
from ctvlp.models.tokens import anatomy_token_flags  # noqa: E402

# (name, batch, (D, H, W), anatomies): the CPU demo's phase-2 batch, and a mid-size CPU case.
CASES = [("demo phase-2 batch", 16, (48, 64, 64), 16), ("ct-rate-ish crop, batch 2", 2, (96, 128, 128), 36)]


def onehot_maxpool_flags(mask: torch.Tensor, m: int) -> list[torch.Tensor]:
    """Released definition: one-hot, then max-pool (kernel = stride, ceil) at each level."""
    ids = torch.arange(1, m + 1, dtype=mask.dtype).view(1, -1, 1, 1, 1)
    onehot = (mask[:, None] == ids).float()  # [B, M, D, H, W]
    return [F.max_pool3d(onehot, s, s, ceil_mode=True).flatten(2) > 0 for s in STAGE_STRIDES]


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, b, size, m in CASES:
        mask = torch.randint(0, m + 1, (b, *size), generator=torch.Generator().manual_seed(0))
        ref, new = onehot_maxpool_flags(mask, m), anatomy_token_flags(mask, m)
        if not all(torch.equal(x, y) for x, y in zip(ref, new)):
            raise AssertionError(f"{name}: scatter flags differ from the one-hot max-pool")
        t_ref = best_of(lambda: onehot_maxpool_flags(mask, m), args.repeats)
        t_new = best_of(lambda: anatomy_token_flags(mask, m), args.repeats)
        rows.append({"case": name, "batch": b, "size": list(size), "anatomies": m,
                     "onehot_maxpool_ms": round(t_ref * 1e3, 1), "scatter_ms": round(t_new * 1e3, 1),
                     "speedup": round(t_ref / t_new, 2)})
        print(rows[-1], flush=True)
    out = ROOT / "bench" / "results"
    meta = {"torch": torch.__version__, "threads": args.threads, "repeats": args.repeats}
    (out / "token_flags.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Anatomy token flags: scatter (ours) vs one-hot max-pool (released definition)", "",
             f"`python bench/token_flags.py`, best of {args.repeats}, {args.threads} torch threads, CPU, "
             f"torch {torch.__version__}. Both agree exactly on every case.", "",
             "| case | batch | D x H x W | anatomies | one-hot max-pool ms | scatter ms | speedup |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['batch']} | {' x '.join(map(str, r['size']))} | {r['anatomies']} | "
              f"{r['onehot_maxpool_ms']} | {r['scatter_ms']} | {r['speedup']}x |" for r in rows]
    (out / "token_flags.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Phase-2 training throughput on one GPU with the Ray-free core: DeepSpeed bf16 engine from
``ctvlp.loop`` fed by ``ctvlp.data`` decode + crop/flip (the functions Ray Data runs in training).

Why Ray-free: the GPU machine of this project has no Ray (its wheel is over the transfer limit),
so the Ray Data loader's CPU delivery rate is measured separately (``bench/loader.py``) and the
GPU side here uses a ``torch.utils.data.DataLoader`` with ``--workers`` processes running the same
decode/augment/collate on in-memory shard rows. Reports samples/s, the data-wait fraction (share
of step wall time spent in ``next(loader)``), peak GPU memory, and the ratio to the bare
model-step benchmark (``bench/results/model_step.json``, same GPU) when present.

Usage (GPU): PYTHONPATH=platform:. python bench/train_step_gpu.py [--steps 50] [--workers 8]
             [key=value spec overrides]   (defaults: paper size, ctrate-chest preset, B=12)
Writes bench/results/train_step_gpu.{json,md}.
STATUS: written for issue 6 item 9 and NOT run yet: no GPU was lent to the session that wrote it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]


class ShardRows(torch.utils.data.Dataset):
    """In-memory shard rows -> augmented samples (decode_sample + train_augment), one per index."""

    def __init__(self, rows: list[dict], crop_size, flip_prob: float) -> None:
        self.rows, self.crop_size, self.flip_prob = rows, tuple(crop_size), flip_prob

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        from ctvlp.data import decode_sample, train_augment

        rng = np.random.default_rng()
        return train_augment(decode_sample(self.rows[i]), self.crop_size, self.flip_prob, rng)


def run(spec, steps: int, warmup: int, workers: int, num_rows: int) -> dict:
    from ctvlp.data import collate
    from ctvlp.loop import build_engine, train_config_from_spec, train_step
    from ctvlp.tasks import build_task
    from tests.jobs.shards import phantom_row

    cfg = train_config_from_spec(spec, 2, cuda=torch.cuda.is_available())
    task = build_task(spec, 2, init={})
    engine = build_engine(task.module, cfg, steps_per_epoch=steps + warmup)
    d, h, w = spec.data.crop_size
    rng = np.random.default_rng(0)
    rows = [phantom_row(f"s{i}", "train", (d + 8, h + 16, w + 16), spec.data.num_anatomies, rng)
            for i in range(num_rows)]
    loader = torch.utils.data.DataLoader(
        ShardRows(rows, spec.data.crop_size, spec.data.flip_prob), batch_size=cfg.global_batch_size,
        shuffle=True, num_workers=workers, collate_fn=collate, drop_last=True, pin_memory=True,
        persistent_workers=workers > 0)
    it, waits, times = iter(_forever(loader)), [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        train_step(engine, task, batch)
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        t2 = time.perf_counter()
        if step >= warmup:
            waits.append(t1 - t0)
            times.append(t2 - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"samples_per_s": cfg.global_batch_size * len(times) / sum(times),
            "data_wait_frac": sum(waits) / sum(times), "peak_gpu_mem_gib": peak,
            "batch_size": cfg.global_batch_size, "bf16": cfg.bf16, "zero_stage": cfg.zero_stage}


def _forever(loader):
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader worker processes (CPU cores feeding)")
    ap.add_argument("--rows", type=int, default=64, help="distinct in-memory studies")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    from ctvlp.config import load_spec

    base = ["resources.use_gpu=true", "resources.num_workers=1", "phases.phase2.batch_size=12"]
    spec = load_spec(None, base + args.overrides)
    record = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "workers": args.workers, "overrides": args.overrides,
              **run(spec, args.steps, args.warmup, args.workers, args.rows)}
    bare = ROOT / "bench" / "results" / "model_step.json"
    if bare.is_file():
        record["model_step_reference"] = str(bare.relative_to(ROOT))
    out = ROOT / "bench" / "results"
    (out / "train_step_gpu.json").write_text(json.dumps(record, indent=2))
    (out / "train_step_gpu.md").write_text(
        f"# Phase-2 train step on {record['device']}\n\n{record['samples_per_s']:.1f} samples/s, "
        f"data wait {100 * record['data_wait_frac']:.0f}%, peak {record['peak_gpu_mem_gib'] or float('nan'):.1f} GiB, "
        f"{args.workers} loader workers\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Delivery rate of the training input pipeline through Ray Data on this machine's CPUs.

Reads committed shards (``--shards``, or tiny phantom shards written to a temp dir at the data
preset's crop size), decodes + random-crops + flips them in Ray Data (``jobs.data``) and collates
batches with ``iter_torch_batches`` exactly as a Train worker does, with no model attached.
Reports samples/s of the second and later epochs (the first includes Ray Data start-up).

Usage: python bench/loader.py [--preset ctrate-chest] [--studies 24] [--epochs 3] [--cpus 2]
Writes bench/results/loader.json and loader.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]


def measure(spec, epochs: int, batch_size: int) -> dict:
    from jobs.data import CollateColumns, build_train_dataset

    ds, rows = build_train_dataset(spec)
    per_epoch = []
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for batch in ds.iter_torch_batches(batch_size=batch_size, collate_fn=CollateColumns(), drop_last=True):
            n += batch["image"].shape[0]
        per_epoch.append({"samples": n, "seconds": time.perf_counter() - t0})
    steady = per_epoch[1:] or per_epoch
    rate = sum(e["samples"] for e in steady) / sum(e["seconds"] for e in steady)
    return {"rows": rows, "epochs": per_epoch, "samples_per_s": rate}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=None, help="an ingest output dir; default: write phantom shards")
    ap.add_argument("--preset", default="ctrate-chest")
    ap.add_argument("--studies", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)

    import ray

    from ctvlp.config import load_spec
    from tests.jobs.shards import write_tiny_shards

    tmp = tempfile.mkdtemp(prefix="ctvlp-loader-")
    spec = load_spec(None, [f"data.preset={args.preset}", f"data.shards_uri={args.shards or tmp}"])
    if not args.shards:
        d, h, w = spec.data.crop_size
        write_tiny_shards(tmp, num_studies=args.studies, num_anatomies=spec.data.num_anatomies,
                          shape=(d + 8, h + 16, w + 16), studies_per_shard=4)
    ray.init(num_cpus=args.cpus, object_store_memory=1_000_000_000, include_dashboard=False,
             log_to_driver=False)
    try:
        result = measure(spec, args.epochs, args.batch_size)
    finally:
        ray.shutdown()
        if not args.shards:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    record = {"load_avg_1m_after": os.getloadavg()[0],  # the box is shared: context for the rate
              "preset": args.preset, "crop_size": list(spec.data.crop_size), "cpus": args.cpus,
              "batch_size": args.batch_size, "shards": args.shards or "phantom (tests/jobs/shards.py)",
              "machine": f"{pyplatform.machine()} {os.cpu_count()} cores", **result}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "loader.json").write_text(json.dumps(record, indent=2))
    (out / "loader.md").write_text(
        f"# Ray Data loader delivery rate\n\n`python bench/loader.py --preset {args.preset} --studies "
        f"{args.studies} --epochs {args.epochs} --cpus {args.cpus}`\n\n"
        f"- crop {tuple(spec.data.crop_size)} (D, H, W), M = {spec.data.num_anatomies}, batch {args.batch_size}\n"
        f"- {args.cpus} Ray CPUs on {record['machine']} (1-min load average after the run: "
        f"{record['load_avg_1m_after']:.1f})\n"
        f"- **{result['samples_per_s']:.2f} samples/s** (epochs 2+); per epoch: "
        + ", ".join(f"{e['samples']} in {e['seconds']:.1f} s" for e in result["epochs"]) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

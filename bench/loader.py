"""The training input pipeline against the peers' loop, on the same studies and the same cores.

**Ours** (``jobs.data``, as the Train workers consume it): committed Parquet shards -> Ray Data
read + decode + random crop + flips (``build_train_dataset``) -> ``iter_torch_batches`` with the
runner's collate and local shuffle buffer -> ``ctvlp.loop.to_device`` (here the CPU): image
float32 ``[B, 1, D, H, W]`` in [0, 1], mask int64 ``[B, D, H, W]``.

**Peers** (fVLM's released loop: crops stored as float32 ``.nii.gz``, read by MONAI): MONAI
``Dataset`` with ``LoadImaged(image, label) -> RandSpatialCropd(crop) -> RandFlipd x 3 ->
ToTensord`` and a MONAI ``DataLoader``; the label is cast to int64 in the workers so that the
consumer receives the same dtypes as ours.

Both read the same studies (one realistic synthetic CT-RATE study through our ingest, its
143 x 256 x 352 chest crop replicated under new ids; ``--phantom`` for blocky test phantoms), at
the preset's crop size, with ``--procs`` worker processes (Ray CPUs / DataLoader workers) plus
the consuming process. Figures per path: samples/s over epochs 2+ (the first includes start-up),
samples/s per worker process, and samples per CPU-second of all processes involved (the
consumer, Ray's own processes or the DataLoader workers: ``psutil``), which the load of other
users on a shared machine does not inflate.

Usage: python bench/loader.py [--preset ctrate-chest] [--studies 24] [--epochs 3] [--procs 2]
Writes bench/results/loader.json and loader.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its live descendants."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # exited in between
            pass
    return total


def _epochs(make_iter, epochs: int, consume) -> dict:
    per_epoch = []
    for _ in range(epochs):
        t0, c0, n = time.perf_counter(), cpu_seconds(), 0
        for batch in make_iter():
            n += consume(batch)
        per_epoch.append({"samples": n, "seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - c0})
    steady = per_epoch[1:] or per_epoch
    samples = sum(e["samples"] for e in steady)
    return {"epochs": per_epoch, "samples_per_s": samples / sum(e["seconds"] for e in steady),
            "samples_per_cpu_s": samples / max(1e-9, sum(e["cpu_seconds"] for e in steady))}


def _check(image, mask, crop) -> int:
    assert image.dtype.is_floating_point and image.shape[2:] == tuple(crop), (image.dtype, image.shape)
    assert str(mask.dtype) == "torch.int64" and mask.shape[1:] == tuple(crop), (mask.dtype, mask.shape)
    return int(image.shape[0])


def measure_ours(spec, procs: int, epochs: int, batch_size: int, convert: bool = True) -> dict:
    """``convert``: make the contract's float32/int64 on this CPU (as the peers deliver them);
    False: stop at the uint8 host batch, as on a GPU node where ``to_device`` converts on the GPU."""
    import ray
    import torch

    from ctvlp.loop import to_device
    from jobs.data import CollateColumns, build_train_dataset

    ray.init(num_cpus=procs, object_store_memory=1_000_000_000, include_dashboard=False, log_to_driver=False)
    try:
        ds, rows = build_train_dataset(spec)
        cpu = torch.device("cpu")

        def batches():
            return ds.iter_torch_batches(batch_size=batch_size, collate_fn=CollateColumns(), drop_last=True,
                                         local_shuffle_buffer_size=spec.data.shuffle_buffer)

        def consume(batch):
            if not convert:
                assert batch["image"].dtype == batch["mask"].dtype == torch.uint8
                return int(batch["image"].shape[0])
            on = to_device(batch, cpu)
            return _check(on["image"], on["mask"], spec.data.crop_size)

        return {"rows": rows, **_epochs(batches, epochs, consume)}
    finally:
        ray.shutdown()


def measure_peers(items: list[dict], spec, procs: int, epochs: int, batch_size: int) -> dict:
    import numpy as np
    import torch
    from monai import transforms as mt
    from monai.data import DataLoader, Dataset

    keys = ["image", "label"]
    p = spec.data.flip_prob
    transform = mt.Compose([
        mt.LoadImaged(keys=keys, ensure_channel_first=True),
        mt.RandSpatialCropd(keys=keys, roi_size=tuple(spec.data.crop_size), random_size=False),
        mt.RandFlipd(keys=keys, prob=p, spatial_axis=0),
        mt.RandFlipd(keys=keys, prob=p, spatial_axis=1),
        mt.RandFlipd(keys=keys, prob=p, spatial_axis=2),
        mt.CastToTyped(keys=["label"], dtype=np.int64),
        mt.SqueezeDimd(keys=["label"], dim=0),
        mt.ToTensord(keys=keys, track_meta=False),
    ])
    loader = DataLoader(Dataset(items, transform), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=procs, persistent_workers=True)
    torch.set_num_threads(1)
    return {"rows": len(items), **_epochs(lambda: iter(loader),
                                          epochs, lambda b: _check(b["image"], b["label"], spec.data.crop_size))}


def realistic_row(spec):
    """One study of the synthetic ``realistic`` corpus through our ingest CPU stage (a shard row)."""
    from bench.ingest import _record
    from ctvlp.synthetic import generate_corpus
    from ingest.pipeline import IngestConfig
    from ingest.process import process_records

    corpus = ROOT / ".cache" / "bench_ingest_corpus"
    if not (corpus / "corpus.json").exists():
        generate_corpus(str(corpus), num_studies=1, seed=0, preset="realistic", ctrate_headers=True)
    stage = IngestConfig.from_spec(spec.model_copy(update={"data": spec.data.model_copy(
        update={"source_uri": str(corpus), "shards_uri": "unused"})})).stage
    row = process_records([_record(str(corpus))], stage)[0]
    assert row["status"] == "ok", row.get("reason")
    return row


def write_studies(spec, work: Path, num_studies: int, phantom: bool) -> list[dict]:
    """Shards under ``work/shards`` (ours) and float32/int .nii.gz crops under ``work/nifti``
    (the peers'), holding the same studies. Returns the peers' items."""
    import nibabel as nib
    import numpy as np

    from ctvlp.data import decode_sample
    from ingest.shards import commit_index, write_group
    from ingest.storage import Storage
    from tests.jobs.shards import phantom_row

    rng = np.random.default_rng(0)
    if phantom:
        d, h, w = spec.data.crop_size
        base = phantom_row("s", "train", (d + 8, h + 16, w + 16), spec.data.num_anatomies, rng)
    else:
        base = realistic_row(spec)
    sample = decode_sample(base)
    storage, items, per_shard = Storage(sse=None), [], 4
    (work / "nifti").mkdir(parents=True, exist_ok=True)
    num_shards = -(-num_studies // per_shard)
    for s in range(num_shards):
        ids = [f"train_{s}_{i}" for i in range(min(per_shard, num_studies - s * per_shard))]
        write_group([{**base, "study_id": i, "split": "train"} for i in ids],
                    f"train-{s:05d}-of-{num_shards:05d}", storage, str(work / "shards"))
        for i in ids:  # fVLM's layout: one float32 [0, 1] image and one label volume per study
            img, lab = work / "nifti" / f"{i}_image.nii.gz", work / "nifti" / f"{i}_label.nii.gz"
            nib.save(nib.Nifti1Image(sample["image"].astype(np.float32) / 255.0, np.eye(4)), img)
            nib.save(nib.Nifti1Image(sample["mask"], np.eye(4)), lab)
            items.append({"image": str(img), "label": str(lab)})
    commit_index(storage, str(work / "shards"), spec.data.anatomies)
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ctrate-chest")
    ap.add_argument("--studies", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--phantom", action="store_true", help="blocky test phantoms instead of the realistic crop")
    ap.add_argument("--only", choices=["ours", "peers"], default=None)
    args = ap.parse_args(argv)

    from ctvlp.config import load_spec

    work = Path(tempfile.mkdtemp(prefix="ctvlp-loader-"))
    spec = load_spec(None, [f"data.preset={args.preset}", f"data.shards_uri={work / 'shards'}",
                            "model.text.name_or_path=tiny", "data.cache_train_mb=0"])  # streamed: the 272K path
    try:
        items = write_studies(spec, work, args.studies, args.phantom)
        sizes = {"shards_mb_per_study": sum(f.stat().st_size for f in (work / "shards" / "data").iterdir())
                 / args.studies / 1e6,
                 "nifti_mb_per_study": sum(f.stat().st_size for f in (work / "nifti").iterdir()) / args.studies / 1e6}
        load0 = os.getloadavg()[0]
        ours = measure_ours(spec, args.procs, args.epochs, args.batch_size) if args.only != "peers" else None
        ours_gpu = (measure_ours(spec, args.procs, args.epochs, args.batch_size, convert=False)
                    if args.only is None else None)
        peers = measure_peers(items, spec, args.procs, args.epochs, args.batch_size) if args.only != "ours" else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"preset": args.preset, "crop_size": list(spec.data.crop_size), "procs": args.procs,
              "batch_size": args.batch_size, "studies": args.studies,
              "input": "phantom (tests/jobs/shards.py)" if args.phantom else "realistic synthetic chest crop",
              "machine": f"{pyplatform.machine()} {os.cpu_count()} cores",
              "load_avg_1m_before": load0, "load_avg_1m_after": os.getloadavg()[0], **sizes,
              "ours": ours, "peers": peers, "ours_uint8_host": ours_gpu}
    if ours and peers:
        record["ratio_per_s"] = ours["samples_per_s"] / peers["samples_per_s"]
        record["ratio_per_cpu_s"] = ours["samples_per_cpu_s"] / peers["samples_per_cpu_s"]
    if args.only is None:
        write_results(record, args)
    print(json.dumps(record, indent=2))
    return 0


def write_results(record: dict, args) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "loader.json").write_text(json.dumps(record, indent=2))
    rows = []
    names = {"ours": "ours (float32/int64 made on this CPU)", "peers": "peers (MONAI)",
             "ours_uint8_host": "ours, uint8 host batches (the GPU converts: not a like-for-like row)"}
    for name in ("ours", "peers", "ours_uint8_host"):
        r = record[name]
        rows.append(f"| {names[name]} | {r['samples_per_s']:.2f} | {r['samples_per_s'] / record['procs']:.2f} | "
                    f"{r['samples_per_cpu_s']:.2f} | "
                    + ", ".join(f"{e['samples']} in {e['seconds']:.1f} s ({e['cpu_seconds']:.1f} CPU-s)"
                                for e in r["epochs"]) + " |")
    (out / "loader.md").write_text(
        "# Training input: ours against the peers' loop\n\n"
        f"`python bench/loader.py --preset {args.preset} --studies {args.studies} --epochs {args.epochs} "
        f"--procs {args.procs} --batch-size {args.batch_size}{' --phantom' if args.phantom else ''}`\n\n"
        f"- {record['input']}; crop {tuple(record['crop_size'])} (D, H, W); batch {args.batch_size}; "
        f"{args.procs} worker processes + the consumer on {record['machine']}\n"
        f"- stored per study: ours {record['shards_mb_per_study']:.1f} MB (Parquet, zstd uint8), "
        f"peers {record['nifti_mb_per_study']:.1f} MB (float32 image + label .nii.gz)\n"
        f"- 1-min load average {record['load_avg_1m_before']:.1f} before, {record['load_avg_1m_after']:.1f} after\n\n"
        "| loop | samples/s | samples/s per worker process | samples per CPU-second (all processes) | epochs |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Ratio ours / peers (same dtypes at the consumer): **{record['ratio_per_s']:.1f}x** in samples/s, "
        f"**{record['ratio_per_cpu_s']:.1f}x** per CPU-second.\n")


if __name__ == "__main__":
    raise SystemExit(main())

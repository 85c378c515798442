"""Seconds per volume of the segmentation stage on CPU with tiny nnU-Nets, and what a GPU run needs.

Writes tiny random nnU-Nets in TotalSegmentator's layout (``ctvlp.synthetic.nnunet``: two of the
five ``total`` parts), then times (a) one :class:`ctvlp.segment.TotalSegmentatorSegmenter` in this
process, per volume after its one load, and (b) the same studies through ingest's actor pool
(``ingest.segment.run_segmentation``: Ray Data, ``--actors`` CPU actors, each loading once). The
ratio (b)/(a) is the actor pool's overhead per volume (decode, mask write, Ray Data). The figures
time TotalSegmentator's preprocessing and nnU-Net's sliding window around a network of a few
thousand parameters: a real ``total`` network's GPU cost (30-80 s per CT) is NOT measured here.

Usage: ``python bench/segment.py [--studies 16 --actors 2]`` -> bench/results/segment.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT))

from ctvlp.segment import SegmenterSettings, TotalSegmentatorSegmenter, TotalTask, total_task  # noqa: E402
from ctvlp.synthetic.nnunet import write_tiny_task  # noqa: E402
from ctvlp.transforms.io import nifti_bytes  # noqa: E402
from ingest.pipeline import IngestConfig  # noqa: E402
from ingest.segment import SegmentConfig, run_segmentation  # noqa: E402
from tests.ingest.corpus import REPORT, phantom, tiny_stage  # noqa: E402

OUT = ROOT / "bench/results/segment"
AFF = np.diag([0.9, 0.9, 2.5, 1.0])
SHAPE = (128, 128, 64)  # ~115 x 115 x 160 mm: 77 x 77 x 107 voxels at 1.5 mm


def corpus(root: Path, n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        img = np.tile(phantom(i)[0], (4, 4, 3))[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
        (root / f"s{i}.nii.gz").write_bytes(nifti_bytes(img, AFF))
        rows.append({"study_id": f"s{i}", "patient_id": f"p{i}", "split": "train", "image_format": "nifti",
                     "image_uri": str(root / f"s{i}.nii.gz"), "mask_uri": "", "meta": "",
                     "findings": REPORT[0], "impression": REPORT[1]})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=16)
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()
    import ray
    import torch

    torch.set_num_threads(1)  # an actor holds one CPU
    tmp = Path(tempfile.mkdtemp())
    full = total_task("total")
    two = TotalTask("total", full.resample_mm, (full.parts[0], full.parts[2]))
    write_tiny_task(tmp / "w", two)
    (tmp / "c").mkdir()
    frame = corpus(tmp / "c", args.studies)
    settings = SegmenterSettings(two, weights_path=str(tmp / "w"), device="cpu")
    t0 = time.perf_counter()
    seg = TotalSegmentatorSegmenter(settings)
    load_s = time.perf_counter() - t0
    from ctvlp.transforms.io import read_nifti

    times = []
    for uri in frame.image_uri:
        image, affine, _ = read_nifti(uri)
        t = time.perf_counter()
        seg(image, affine)
        times.append(time.perf_counter() - t)
    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": f"{ROOT}:{ROOT / 'platform'}"}})
    cfg = IngestConfig(source_uri="", shards_uri=str(tmp / "shards"), stage=tiny_stage(),
                       segmentation="totalsegmentator",
                       segment=SegmentConfig(settings, num_actors=args.actors, cpus_per_actor=1.0))
    t = time.perf_counter()
    _, stats = run_segmentation(frame, cfg, log=print)
    pool_wall = time.perf_counter() - t
    ray.shutdown()
    res = {
        "studies": args.studies, "actors": args.actors, "shape_xyz": list(SHAPE), "spacing_mm": [0.9, 0.9, 2.5],
        "networks": seg.num_networks, "load_s": round(load_s, 3),
        "in_process_s_per_volume": round(float(np.median(times[1:] or times)), 3),
        "pool_s_per_volume_in_actor": round(stats["s_per_volume"], 3),
        "pool_wall_s": round(pool_wall, 2), "pool_volumes_per_s": round(args.studies / pool_wall, 3),
        "loads_per_actor": sorted(stats["actors"].values()),
        "load_avg_1m": os.getloadavg()[0], "cpu": platform.processor() or platform.machine(),
    }
    res["ratio_actor_to_in_process"] = round(res["pool_s_per_volume_in_actor"] / res["in_process_s_per_volume"], 2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(res, indent=1))
    md = ["# Segmentation stage on CPU, tiny nnU-Nets (bench/segment.py)", "",
          f"{args.studies} volumes {SHAPE} at 0.9 x 0.9 x 2.5 mm, two tiny `total` parts (1.5 mm), "
          f"{args.actors} CPU actors; load average {res['load_avg_1m']:.2f} at the end.", "",
          "| measure | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in res.items() if k not in ("cpu",)]
    md += ["", "Not measured: a real `total` network (the GPU cost). bench/gpu_acceptance.py's GPU run needs "
           "TotalSegmentator's weights (Dataset291-295 or 297) under ingest.totalseg.weights_path on the "
           "GPU machine and a few CT volumes; then ingest with ingest.segmentation=totalsegmentator reports "
           "seconds per volume and loads per actor in summary.md."]
    OUT.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""Predictor speed (scans/s): one process vs Ray Data actors, on the demo's scan and model sizes.

A ``demo``-preset synthetic corpus (64 x 64 x 64 voxels, CT-RATE layout) and a phase-4 export of
``jobs/specs/demo.yaml``'s model (debug-size 3D ResNet, width 16, four input windows; the offline
MiniLM text encoder) with random weights: speed does not depend on training. Each scan is read
from its NIfTI with its supplied mask, goes through ingest's transforms and the evaluation's
windows and prompts (``ctvlp.Predictor``). Baseline: ``Predictor`` in this process (1 torch
thread), end to end (loading the export included, as the CLI pays it) and in steady state; then
``jobs/predict.py``'s Ray Data path with 1 and 2 actors (1 CPU each; their start-up and export
loading included). Ratios are end to end against the one-process run of the same invocation; the
load average says how busy the machine was.

Usage: ``python bench/predict.py [--num-studies 24]`` -> bench/results/predict.{json,md}.
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
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]

import torch  # noqa: E402

OUT = ROOT / "bench/results/predict"


def build(tmp: Path, num_studies: int):
    """(export dir, [(scan, mask)]) of a demo-size corpus and model."""
    from ctvlp.config import load_spec
    from ctvlp.synthetic.corpus import generate_corpus
    from ctvlp.tasks import build_task

    generate_corpus(tmp / "corpus", num_studies, seed=0, preset="demo", min_test_positives=0)
    spec = load_spec(ROOT / "jobs/specs/demo.yaml")
    torch.manual_seed(0)
    export = build_task(spec, 4, init={}).export(tmp / "export4")
    scans = sorted((tmp / "corpus" / "dataset").rglob("*.nii.gz"))
    return export, [(s, tmp / "corpus" / "masks" / s.relative_to(tmp / "corpus" / "dataset")) for s in scans]


def one_process(export: Path, pairs) -> dict:
    from ctvlp import Predictor

    start = time.perf_counter()
    predictor = Predictor.from_export(export, device="cpu")
    load_s = time.perf_counter() - start
    predictor.predict_many([pairs[0][0]], [pairs[0][1]])  # warm-up (first forward, tokenizer)
    t0 = time.perf_counter()
    prepared = [predictor.prepare(s, m) for s, m in pairs]
    prep_s = time.perf_counter() - t0
    predictor.score_samples(prepared, [None] * len(prepared))
    end = time.perf_counter()
    steady = end - t0
    return {"path": "one process", "actors": 0, "load_s": round(load_s, 2), "seconds": round(end - start, 2),
            "scans_per_s": round(len(pairs) / (end - start), 3), "steady_s": round(steady, 2),
            "steady_scans_per_s": round(len(pairs) / steady, 3), "prepare_s": round(prep_s, 2),
            "score_s": round(steady - prep_s, 2)}


def ray_data(export: Path, pairs, workers: int, out: Path) -> dict:
    from jobs.predict import run_ray

    args = SimpleNamespace(model=str(export), scans=[str(s) for s, _ in pairs], mask=[str(m) for _, m in pairs],
                           out=str(out), batch_size=8, chunk=4, workers=workers, gpus_per_worker=0.0,
                           s3_endpoint_url=None)
    t0 = time.perf_counter()
    run_ray(args)  # prints its own scans/s (actors' start-up included)
    seconds = time.perf_counter() - t0
    return {"path": "Ray Data", "actors": workers, "seconds": round(seconds, 2),
            "scans_per_s": round(len(pairs) / seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-studies", type=int, default=24)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        export, pairs = build(Path(tmp), args.num_studies)
        results = [one_process(export, pairs)]
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "platform")])}})
        try:
            results += [ray_data(export, pairs, w, Path(tmp) / f"ray{w}.csv") for w in (1, 2)]
        finally:
            ray.shutdown()
    base = results[0]["scans_per_s"]
    for r in results:
        r["ratio_vs_one_process"] = round(r["scans_per_s"] / base, 2)
    env = {"torch": torch.__version__, "threads_per_process": 1, "cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()], "num_scans": len(pairs)}
    OUT.with_suffix(".json").write_text(json.dumps({"env": env, "results": results}, indent=1) + "\n")
    lines = ["# Predictor speed: scans/s from raw NIfTI to findings (CPU)", "",
             f"`python bench/predict.py --num-studies {args.num_studies}`: {len(pairs)} demo-preset scans (64^3) "
             f"with supplied masks, `jobs/specs/demo.yaml`'s phase-4 model (random weights), CPU, 1 torch thread "
             f"per process, torch {env['torch']}, {env['cores']} cores, load average {env['loadavg_before'][0]} before "
             f"and {env['loadavg_after'][0]} after (a shared machine: other jobs running). Ray Data times include "
             "starting the actors and loading the export in each.", "",
             "| path | actors | seconds, end to end | scans/s | ratio vs one process |", "|---|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['actors'] or '-'} | {r['seconds']} | {r['scans_per_s']} | "
              f"{r['ratio_vs_one_process']} |" for r in results]
    b = results[0]
    lines += ["", "One process in steady state (export loaded, first forward done): "
              f"{b['steady_scans_per_s']} scans/s; "
              f"of its {b['steady_s']} s, reading + ingest transforms {b['prepare_s']} s, windows + encoders + prompt "
              f"scores {b['score_s']} s; loading the export {b['load_s']} s.",
              "", "On a 2-core CPU machine Ray Data cannot beat one process: its actors are processes that each "
              "start, import torch and load the export, on the same two cores. It pays off with many scans on a "
              "cluster (an actor per GPU or per node), which this machine cannot show."]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

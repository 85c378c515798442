"""Benchmark: an 8-trial phase-3 Ray Tune sweep (codebook size K and beta) on cached tokens, on CPU.

Input: a tiny synthetic CT-RATE corpus (``--studies`` studies) ingested into train/valid/test
shards, and a phase-2 export with random initial weights whose frozen encoder makes the cached
level-4 tokens (``tests/tune/data.py``). The sweep is ``jobs/specs/tune_debug.yaml`` with
``tune.num_trials=8``, ``tune.max_steps`` and ``tune.searcher`` from the command line: 1-worker
trials on Ray Train (DeepSpeed ZeRO-1, gloo), ASHA on the optimiser step (grace 2, factor 2).

    .venv/bin/python bench/tune_phase3.py [--studies 40] [--max-steps 8] [--searcher random] [--work DIR]

Writes bench/results/tune_phase3.md (the ranked table, the schedule, ASHA stops and wall times) and
copies the objective plot to bench/results/tune_phase3.png. Ray runs locally with 2 CPUs and the
dashboard (needed by Train-in-Tune). The objective of a random-weight encoder measures the
machinery, not the method: expect AUCs near chance.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "platform")]
os.chdir(REPO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--searcher", default="random", choices=["random", "optuna"])
    ap.add_argument("--work", default=str(REPO / ".cache" / "bench_tune_phase3"))
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "platform")])
    import ray

    from ctvlp.config import load_spec
    from tests.tune.data import SPEC, make_sweep_inputs
    from tune.sweep import run_sweep

    ray.init(num_cpus=2, include_dashboard=True, object_store_memory=1_500_000_000, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    t0 = time.time()
    overrides = make_sweep_inputs(Path(args.work), num_studies=args.studies)
    t_data = time.time() - t0
    spec = load_spec(SPEC, [*overrides, "storage.server_side_encryption=null", "tune.num_trials=8",
                            f"tune.max_steps={args.max_steps}", f"tune.searcher={args.searcher}"])
    t1 = time.time()
    out = run_sweep(spec)
    t_sweep = time.time() - t1
    ray.shutdown()
    write_report(args, out, t_data, t_sweep)
    return 0


def write_report(args, out: dict, t_data: float, t_sweep: float) -> None:
    df, sched = out["table"], out["schedule"]
    md = Path(out["paths"]["markdown"]).read_text()
    res = REPO / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    if "plot" in out["paths"]:
        shutil.copy(out["paths"]["plot"], res / "tune_phase3.png")
    lines = [
        "# Phase-3 Ray Tune sweep on cached tokens (CPU)", "",
        f"Command: `.venv/bin/python bench/tune_phase3.py --studies {args.studies} --max-steps {args.max_steps} "
        f"--searcher {args.searcher}`", "",
        f"- corpus: {args.studies} tiny synthetic studies -> shards -> phase-2 export (random weights) "
        f"-> cached level-4 tokens ({t_data:.0f} s for corpus + ingest + export when not cached)",
        f"- trials: {len(df)}, {out['max_concurrent']} at once on 2 CPUs; each {sched.total_steps} optimiser steps "
        f"({sched.epochs} epoch(s) x {sched.steps_per_epoch}), a report every {sched.report_every}",
        f"- ASHA stopped {int(df['stopped_early'].sum())} trial(s) early; errors: {int((df['status'] == 'error').sum())}",
        f"- sweep wall time: {t_sweep:.0f} s (token cache included; {os.cpu_count()} cores, 1-min load average "
        f"{os.getloadavg()[0]:.1f} at the end)",
        f"- objective: {out['objective'].metric} ({out['objective'].mode}); plot: `bench/results/tune_phase3.png`", "",
        md,
    ]
    (res / "tune_phase3.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())

"""Is the `compare` corpus preset a benchmark that can tell methods apart? Phase 2 alone, in bands.

Trains the phase-2 task of ``--spec`` (default: the comparison spec) from scratch for ``--steps``
optimiser steps in one process (``bench/alignment_budget.py``'s loop: AdamW, the phase's lr and
global batch, 10 warm-up steps, clip 1.0), scores the test split zero-shot and counts the findings
per AUC band against the issue's target for the preset (at the comparison's model and budget):
at least 12 of the 22 findings in [0.6, 0.95], at most 3 above 0.97, at most 3 below 0.55, and
the supervised head of ``bench/supervised_capacity.py`` on the same shards at least 0.05 above
phase 2's macro AUC (``--supervised`` names its JSON). Each run appends a JSON line to
``bench/results/compare_preset.jsonl``; the Markdown table ``compare_preset.md`` is rendered
from all lines, with the machine's load average at each run.

Usage:
    python -m ctvlp.synthetic --out C --num-studies 600 --preset compare --workers 2
    python -m ingest --spec jobs/specs/compare.yaml data.source_uri=C data.shards_uri=S
    python bench/compare_preset.py --shards S --steps 63 --tag v1 [key=value ...]
    python bench/supervised_capacity.py --run R --spec jobs/specs/compare.yaml --steps 63 --out D
    python bench/compare_preset.py --table [--supervised D/supervised_capacity.json]
    python bench/compare_preset.py --from-compare R/compare-compare --tag run1  # the Ray runs' p2_only row
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

from bench.alignment_budget import evaluate, load_split, train_phase  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "compare_preset.jsonl"
BANDS = {"in [0.60, 0.95]": (0.60, 0.95), "above 0.97": (0.97, 1.01), "below 0.55": (-0.01, 0.55)}
TARGET = {"in [0.60, 0.95]": ">= 12", "above 0.97": "<= 3", "below 0.55": "<= 3"}


def band_counts(auc: dict[str, float]) -> dict[str, int]:
    """Findings per AUC band (closed at the band's edges, as the target reads)."""
    v = np.array(list(auc.values()))
    return {name: int(((v >= lo) & (v <= hi)).sum()) if name.startswith("in") else
            int((v > lo).sum()) if name.startswith("above") else int((v < hi).sum())
            for name, (lo, hi) in BANDS.items()}


def meets_target(counts: dict[str, int]) -> bool:
    return counts["in [0.60, 0.95]"] >= 12 and counts["above 0.97"] <= 3 and counts["below 0.55"] <= 3


def table(results: Path, supervised: Path | None) -> str:
    runs = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    sup = json.loads(supervised.read_text()) if supervised and supervised.is_file() else None
    lines = ["# The `compare` preset against its target (bench/compare_preset.py)", "",
             "Phase 2 alone from scratch (in one process, 2 threads; or `--from-compare`: the comparison's",
             "Ray runs, mean over seeds, train s = summed step time); zero-shot AUC on the test split.",
             "Target: >= 12 of 22 findings in [0.60, 0.95], <= 3 above 0.97, <= 3 below 0.55; supervised",
             "head >= phase 2 + 0.05.", "",
             "| tag | source | steps | train s | load avg | macro AUC | in [0.60, 0.95] | above 0.97 | below 0.55 | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = r["bands"]
        lines.append(f"| {r['tag']} | {Path(r['shards']).name} | {r['train']['steps']} | {r['train']['seconds']:.0f} | "
                     f"{r['load_avg']:.1f} | {r['macro_auc']:.3f} | {c['in [0.60, 0.95]']} | {c['above 0.97']} | "
                     f"{c['below 0.55']} | {'met' if meets_target(c) else 'missed'} |")
    if sup:
        macro = float(np.nanmean(list(sup["auc"].values())))
        lines += ["", f"Supervised head (`{sup['run']}`, {sup['steps']} steps of {sup['batch_size']}): macro AUC "
                  f"{macro:.3f}; phase 2's last row {runs[-1]['macro_auc']:.3f}: difference "
                  f"{macro - runs[-1]['macro_auc']:+.3f} (target >= +0.05)."]
    names = list(runs[-1]["zero_shot"]) if runs else []
    lines += ["", "| finding | " + " | ".join(r["tag"] for r in runs) + (" | supervised |" if sup else " |"),
              "|---" * (len(runs) + 1 + bool(sup)) + "|"]
    for d in names:
        cells = [f"{r['zero_shot'].get(d, float('nan')):.3f}" for r in runs]
        if sup:
            cells.append(f"{sup['auc'].get(d) or float('nan'):.3f}")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def record_compare_row(out_dir: Path, tag: str, results: Path, row: str = "p2_only") -> None:
    """Append the comparison's phase-2-alone figures (the Ray runs at the comparison's budget):
    per-disease AUC averaged over the row's seeds, steps and summed step seconds of its runs."""
    import pandas as pd

    seeds = sorted(out_dir.glob(f"{row}-seed*/zero_shot/per_disease.csv"))
    if not seeds:
        raise FileNotFoundError(f"no {row}-seed*/zero_shot/per_disease.csv under {out_dir}")
    auc = pd.concat([pd.read_csv(p, index_col="disease")["auc"] for p in seeds], axis=1).mean(1).dropna()
    methods = pd.read_csv(out_dir / "methods.csv", index_col="row") if (out_dir / "methods.csv").is_file() else None
    steps = int(str(methods.at[row, "steps"]).split()[-1]) if methods is not None else 0
    train_s = float(methods.at[row, "train_s"]) if methods is not None else float("nan")
    record = {"tag": tag, "shards": str(out_dir), "overrides": [], "seed": f"{len(seeds)} seeds",
              "train": {"steps": steps, "seconds": train_s}, "load_avg": os.getloadavg()[0],
              "macro_auc": float(auc.mean()), "bands": band_counts(auc.to_dict()), "zero_shot": auc.to_dict(),
              "time": time.strftime("%Y-%m-%d %H:%M")}
    with results.open("a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "jobs" / "specs" / "compare.yaml"))
    ap.add_argument("--shards", help="shards of a `compare`-preset corpus (ingest output)")
    ap.add_argument("--steps", type=int, default=63, help="phase-2 optimiser steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--supervised", default=None, help="supervised_capacity.json of the same shards")
    ap.add_argument("--table", action="store_true", help="only render the results file")
    ap.add_argument("--from-compare", default=None,
                    help="a jobs/compare.py output dir: record its p2_only row (per-disease AUC, mean over seeds)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value spec overrides")
    args = ap.parse_args(argv)
    results = Path(args.results)
    if args.from_compare:
        record_compare_row(Path(args.from_compare), args.tag, results)
    elif not args.table:
        if not args.shards:
            ap.error("--shards is required unless --table")
        from ctvlp.config import load_spec

        torch.set_num_threads(args.threads)
        spec = load_spec(args.spec, [*args.overrides, "phases.phase2.init.vision_encoder=null"])
        train, test = load_split(Path(args.shards), "train"), load_split(Path(args.shards), "test")
        task, info = train_phase(spec, 2, train, 0.0, args.seed, max_steps=args.steps)
        auc = evaluate(spec, task, train, test, probe=False)["zero_shot"]
        record = {"tag": args.tag, "shards": args.shards, "overrides": args.overrides, "seed": args.seed,
                  "train": info, "load_avg": os.getloadavg()[0], "macro_auc": float(np.mean(list(auc.values()))),
                  "bands": band_counts(auc), "zero_shot": auc, "time": time.strftime("%Y-%m-%d %H:%M")}
        results.parent.mkdir(parents=True, exist_ok=True)
        with results.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps({k: record[k] for k in ("tag", "macro_auc", "bands")}))
    md = table(results, Path(args.supervised) if args.supervised else None)
    results.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

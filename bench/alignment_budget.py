"""Zero-shot quality per wall-clock budget of phase-2 training, in one process (no Ray, no DeepSpeed).

The demo's 20-minute budget is mostly phase 2, so what a spec change buys is best measured as AUC at
equal *time*, not equal steps. This script trains the phase-2 task of ``--spec`` (default: the demo
spec) from scratch, or from the encoder of ``--phase1-seconds`` of phase 1 (eq. 2), on an existing
demo run's shards for ``--seconds`` with plain AdamW (linear
warm-up over 10 steps, the phase's lr and batch size, clip 1.0), then scores the test split
zero-shot (``ctvlp.eval.zeroshot``) and, with ``--probe``, a linear probe fitted on the train
split. Each run appends one JSON line to ``bench/results/alignment_budget.jsonl``; ``--table``
renders that file as ``alignment_budget.md``.

Usage:
    python jobs/demo.py --out /tmp/demo                  # once: corpus + shards
    python bench/alignment_budget.py --shards /tmp/demo/main/shards --seconds 240 --tag base
    python bench/alignment_budget.py --shards ... --seconds 240 --tag cached \\
        model.text.freeze_layers=6 model.text.cache_size=8192
    python bench/alignment_budget.py --shards ... --phase1-seconds 120 --seconds 240 --tag p1
    python bench/alignment_budget.py --table
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
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

RESULTS = ROOT / "bench" / "results" / "alignment_budget.jsonl"


def load_split(shards: Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    from ctvlp.data.codec import decode_sample

    rows = []
    for path in sorted((shards / "data").glob(f"{split}-*.parquet")):
        rows += [decode_sample(r) for r in pq.read_table(path).to_pylist()]
    if not rows:
        raise FileNotFoundError(f"no {split} shards under {shards / 'data'}")
    return rows


def batches(train: list[dict], spec, batch_size: int, rng: np.random.Generator):
    """Endless epochs of random-crop batches (drop_last), reshuffled every epoch."""
    from ctvlp.data.augment import train_augment
    from ctvlp.data.collate import collate

    while True:
        perm = rng.permutation(len(train))
        for i in range(0, len(train) - batch_size + 1, batch_size):
            yield collate([train_augment(train[j], spec.data.crop_size, spec.data.flip_prob, rng)
                           for j in perm[i:i + batch_size]])


def train_phase(spec, phase: int, train: list[dict], seconds: float, seed: int,
                vision_state: dict | None = None, max_steps: int = 0) -> tuple[object, dict]:
    """Train ``phase`` (1 or 2) from scratch, or its vision model from ``vision_state``, for
    ``seconds`` of wall time or, when ``max_steps`` > 0, for that many optimiser steps."""
    from ctvlp.loop import to_device
    from ctvlp.tasks import build_task, total_loss

    torch.manual_seed(seed)
    task = build_task(spec, phase, {})
    if vision_state is not None:
        task.module["vision"].load_state_dict(vision_state)
    ps = spec.phase(phase)
    params = [p for p in task.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ps.lr, weight_decay=ps.weight_decay)
    task.train()
    losses, t0, step = [], time.time(), 0
    for batch in batches(train, spec, ps.global_batch_size, np.random.default_rng(seed)):
        if (step >= max_steps) if max_steps else (time.time() - t0 > seconds):
            break
        for group in opt.param_groups:
            group["lr"] = ps.lr * min(1.0, (step + 1) / 10)
        out, _ = task.training_step(to_device(batch, torch.device("cpu")))
        loss = total_loss(out)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, ps.grad_clip)
        opt.step()
        task.after_step()
        if "text" in task.module:
            task.module["text"].temperature.clamp_()
        losses.append(float(loss.detach()))
        step += 1
    info = {"steps": step, "seconds": round(time.time() - t0, 1),
            "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:]))}
    if "text" in task.module:
        text = task.module["text"]
        info.update(text_cache_hits=text.cache_hits, text_cache_misses=text.cache_misses)
    return task, info


def auc_per_disease(names, labels, scores) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    out = {}
    for k, name in enumerate(names):
        ok = ~np.isnan(scores[:, k]) & ~np.isnan(labels[:, k])
        if ok.any() and len(np.unique(labels[ok, k])) == 2:
            out[name] = float(roc_auc_score(labels[ok, k], scores[ok, k]))
    return out


def evaluate(spec, task, train, test, probe: bool) -> dict:
    from ctvlp.eval.embed import EvalModel
    from ctvlp.eval.probe import ProbeSet, fit_probe
    from ctvlp.eval.zeroshot import zero_shot

    model = EvalModel(spec, {"vision": task.module["vision"], "text": task.module["text"]}, 2)
    diseases = spec.eval.disease_list(spec.data)
    zs = zero_shot(model, test, diseases, spec.data.eval_window)
    result = {"zero_shot": auc_per_disease(zs.diseases, zs.labels, zs.scores)}
    if probe:
        tr = zero_shot(model, train, diseases, spec.data.eval_window)
        index = [spec.data.anatomies.index(zs.anatomy_of[d]) for d in zs.diseases]
        fit = fit_probe(ProbeSet(tr.embeddings.embeds, tr.embeddings.present, tr.labels), zs.diseases, index,
                        epochs=spec.eval.probe_epochs, seed=spec.seed)
        pred = fit.predict(ProbeSet(zs.embeddings.embeds, zs.embeddings.present, zs.labels))
        result["probe"] = auc_per_disease(zs.diseases, zs.labels, pred)
    return result


def table() -> str:
    runs = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    lines = ["# Phase-2 zero-shot AUC per wall-clock budget (bench/alignment_budget.py)", "",
             "One process, 2 torch threads, the 2-core CPU machine; test split of the 300-study demo corpus (the n900 rows: 900 studies).",
             "Overrides apply to jobs/specs/demo.yaml of the commit that wrote the row; rows with a",
             "`producer` field came from the script's prototype (same task, optimiser and evaluation code).", "",
             "| tag | overrides | phase-1 s | phase-2 s | phase-2 steps | zero-shot macro AUC | probe macro AUC |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        zs, pr = r["zero_shot"], r.get("probe")
        what = (' '.join(r['overrides']) or '(demo spec)') + (f" ({r['note']})" if r.get('note') else '')
        lines.append(f"| {r['tag']} | {what} | {r.get('phase1_s', 0):g} | "
                     f"{r['budget_s']:g} | "
                     f"{r['train']['steps']} | {np.mean(list(zs.values())):.3f} | "
                     f"{'' if not pr else f'{np.mean(list(pr.values())):.3f}'} |")
    names = list(runs[0]["zero_shot"]) if runs else []
    lines += ["", "| disease | " + " | ".join(r["tag"] for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for d in names:
        lines.append(f"| {d} | " + " | ".join(f"{r['zero_shot'].get(d, float('nan')):.3f}" for r in runs) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "jobs" / "specs" / "demo.yaml"))
    ap.add_argument("--shards", help="a demo run's shards directory (DIR/main/shards)")
    ap.add_argument("--seconds", type=float, default=240.0, help="phase-2 budget")
    ap.add_argument("--phase1-seconds", type=float, default=0.0,
                    help="train phase 1 (eq. 2) first for this long and start phase 2 from its encoder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--table", action="store_true", help="only render the results file as Markdown")
    ap.add_argument("--results", default=str(RESULTS), help="the JSON-lines file runs append to")
    ap.add_argument("overrides", nargs="*", help="dotted key=value spec overrides")
    args = ap.parse_args(argv)
    if args.table:
        RESULTS.with_suffix(".md").write_text(table())
        print(table())
        return 0
    if not args.shards:
        ap.error("--shards is required unless --table")
    from ctvlp.config import load_spec

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec, args.overrides)
    train, test = load_split(Path(args.shards), "train"), load_split(Path(args.shards), "test")
    vision_state, phase1_info = None, None
    if args.phase1_seconds > 0:
        task1, phase1_info = train_phase(spec, 1, train, args.phase1_seconds, args.seed)
        vision_state = task1.module["vision"].state_dict()
    task, train_info = train_phase(spec, 2, train, args.seconds, args.seed, vision_state)
    t0 = time.time()
    result = evaluate(spec, task, train, test, args.probe)
    record = {"tag": args.tag, "overrides": args.overrides, "budget_s": args.seconds, "threads": args.threads,
              "phase1_s": args.phase1_seconds, "phase1": phase1_info, "train": train_info,
              "eval_s": round(time.time() - t0, 1), "torch": torch.__version__, **result}
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("zero_shot", "probe")}))
    print(f"zero-shot macro AUC {np.mean(list(result['zero_shot'].values())):.3f}"
          + (f", probe {np.mean(list(result['probe'].values())):.3f}" if args.probe else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory of one phase-4 training step, levels pooled as a list (now) vs concatenated (before).

Until issue 16, ``boosted_forward`` concatenated every level-1..3 token with the boosted level-4
keys before pooling (``torch.cat``); it now hands the levels to ``AnatomyQueryPooling`` as a list,
as phase 2 does. This bench runs one phase-4 step (forward, backward) of the real task at the
ctrate-chest preset (112 x 256 x 352 crop, encoder width 64, token dim 256), B = 1, M = 4 and 16,
in a fresh subprocess per variant, and reads the subprocess's peak RSS (CPU) or peak CUDA memory.
``--variant concat`` swaps in the removed code (kept below for this comparison only).

The analytic size of what was removed, per step: the concatenated keys B x (L1 + L2 + L3) x C
float32 values and their gradient of the same size in the backward, plus the concatenated bool
flags B x M x (L1 + L2 + L3) (+ B x M x M L4 for the block-diagonal part, kept in both).

Usage: PYTHONPATH=platform:. python bench/phase4_memory.py   -> bench/results/phase4_memory.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]
GROUPINGS = {4: "chest", 16: "chest-abdomen"}


def _boosted_forward_concat(vision, vqvae, perception, image, mask):
    """``ctvlp.models.boost.boosted_forward`` as it was before issue 16 (for this bench only)."""
    from ctvlp.models.boost import block_diagonal_flags, encode_tokens, reconstruct_level4

    enc = encode_tokens(vision, image, mask)
    tokens, flags = enc["tokens"], enc["flags"]
    tok4, flags4 = tokens[-1], flags[-1]
    b, m, l4 = flags4.shape
    recon = reconstruct_level4(vqvae, tok4.detach(), flags4)
    orig = tok4[:, None].expand(b, m, l4, tok4.shape[-1])
    boosted = perception.forward_dense(orig, recon.to(orig.dtype))
    keys = torch.cat([*tokens[:-1], boosted.reshape(b, m * l4, -1)], dim=1)
    key_flags = torch.cat([*flags[:-1], block_diagonal_flags(flags4)], dim=-1)
    pooled = vision.pooling(keys, key_flags)
    return {"embeds": pooled["embeds"], "valid": pooled["valid"], "intact": enc["intact"],
            "boosted4": boosted, "orig4": tok4, "flags4": flags4}


def _current_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**30
    with open("/proc/self/statm") as f:  # resident pages now (ru_maxrss is only the peak)
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def child(variant: str, m: int, batch: int) -> dict:
    from bench.gpu_acceptance import synthetic_batch
    from ctvlp.config import load_spec
    from ctvlp.models.resnet3d import stage_grid_shapes
    from ctvlp.tasks import build_task, total_loss

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = load_spec(None, [f"data.grouping={GROUPINGS[m]}", "model.text.name_or_path=tiny",
                            "model.pool_dropout=0.0"])  # B = 1: one sample, so eq. 1's loss is 0 (cost unchanged)
    if variant == "concat":
        import ctvlp.tasks.phase4 as phase4

        phase4.boosted_forward = _boosted_forward_concat
    crop = tuple(spec.data.crop_size)
    torch.manual_seed(0)
    task = build_task(spec, 4, init={})
    task.module.to(device)
    task.train()
    data = synthetic_batch(batch, crop, m, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    losses, _ = task.training_step(data)
    held = _current_gib(device)  # what the forward keeps alive for the backward (+ weights, batch)
    total_loss(losses).backward()
    seconds = time.perf_counter() - t0
    grids = stage_grid_shapes(crop)
    l123 = sum(d * h * w for d, h, w in grids[:-1])
    l4 = grids[-1][0] * grids[-1][1] * grids[-1][2]
    c = spec.model.token_dim
    out = {"variant": variant, "M": m, "B": batch, "crop": list(crop), "token_dim": c,
           "encoder_width": spec.model.encoder_width, "L1_3": l123, "L4": l4, "step_s": seconds,
           "loss": float(total_loss(losses).detach()), "after_forward_gib": held,
           "analytic_removed_gib": (2 * batch * l123 * c * 4 + batch * m * l123) / 2**30}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", choices=["list", "concat"])
    p.add_argument("--anatomies", type=int, nargs="+", default=[4, 16])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "phase4_memory.json")
    p.add_argument("--from-log", type=Path, help="write the results of rows printed by an earlier run")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.anatomies[0], args.batch)))
        return
    if args.from_log:  # rows printed by an earlier (interrupted) run, one dict per line
        import ast

        rows = [ast.literal_eval(line) for line in args.from_log.read_text().splitlines() if line.startswith("{")]
        write_results(rows, sorted({r["M"] for r in rows}), args.out)
        return
    rows = []
    for m in args.anatomies:
        for variant in ("concat", "list"):
            cmd = [sys.executable, __file__, "--child", variant, "--anatomies", str(m), "--batch", str(args.batch)]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)])}
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    write_results(rows, args.anatomies, args.out)


def write_results(rows: list[dict], anatomies: list[int], out: Path) -> None:
    load = os.getloadavg()[0]
    out.write_text(json.dumps({"rows": rows, "load_avg_1m": load}, indent=2) + "\n")
    lines = ["# Phase-4 step peak memory: levels concatenated (before) vs pooled as a list (now)", "",
             f"`python bench/phase4_memory.py` (one subprocess per row, {'CUDA peak allocated' if torch.cuda.is_available() else 'CPU peak RSS'}; "
             f"load average {load:.1f})", "",
             "Peak: the step's maximum; after forward: what is resident when the backward starts. Both",
             "variants hold the same after the forward: the pooling's backward saves the level tokens either",
             "way (the concatenation took their place among the saved tensors instead of adding to them), so",
             "the removed copy was transient and shows only in the peak. The analytic column is the copy and",
             "its gradient, B x L1-3 x C x 4 B x 2, which the old code allocated once each per step.", "",
             "| M | B | crop | L1-3 tokens | peak concat / list GiB | after forward concat / list GiB | analytic removed GiB | loss concat / list |",
             "|---|---|---|---|---|---|---|---|"]
    for m in anatomies:
        cat = next(r for r in rows if r["M"] == m and r["variant"] == "concat")
        lst = next(r for r in rows if r["M"] == m and r["variant"] == "list")
        lines.append(f"| {m} | {cat['B']} | {'x'.join(map(str, cat['crop']))} | {cat['L1_3']} | "
                     f"{cat['peak_gib']:.2f} / {lst['peak_gib']:.2f} | {cat['after_forward_gib']:.2f} / "
                     f"{lst['after_forward_gib']:.2f} | {cat['analytic_removed_gib']:.2f} | "
                     f"{cat['loss']:.6f} / {lst['loss']:.6f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Phase 3 on cached tokens against phase 3 through the frozen encoder: one epoch each, and the
cache pass, on the same studies and model size; the break-even number of epochs.

Both paths run the same code as a run does, in one process on one core (no Ray: what is compared
is the work per epoch, not the plumbing):

- **through the encoder** (``phases.phase3_cached_tokens=false``): shard rows -> ``decode_sample``
  -> ``train_augment`` (random crop + flips) -> ``collate`` -> ``to_device`` -> the phase-3 task's
  ``training_step`` (frozen encoder forward, level-4 instances, VQ-VAE) -> backward -> AdamW, per
  batch of ``global_batch_size`` studies;
- **cache pass** (``jobs.tokens.window_instances``, what the ``TokenEncoder`` actors run): shard
  rows -> one evaluation window per anatomy -> frozen encoder -> token rows, written to Parquet;
- **on cached tokens**: token rows -> ``TokenCollate`` -> ``training_step`` -> backward -> AdamW,
  per batch of ``global_batch_size`` instances.

An epoch is one pass over the train studies (through the encoder) or over their instances (cached).
Times are CPU seconds of the one process (one torch thread): the load of other users on a shared
machine inflates them far less than wall time. Break-even: the cache pays for itself after ``cache_pass / (epoch_encoder - epoch_cached)`` epochs.

Sizes (``--size``): ``debug`` (jobs/specs/debug.yaml: tiny encoder, 32^3 crops) and ``r18`` (ResNet-18
width 32, the paper's VQ-VAE and token width, 64 x 128 x 128 crops, 4 anatomies); the paper's
encoder (width 64, 112 x 256 x 352) is too slow for a CPU epoch: docs/scale.md scales the ratio.

    python bench/phase3_cache.py [--size r18] [--studies 16]

Writes bench/results/phase3_cache.json and .md (every size run so far is kept in the json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]

SIZES = {
    "debug": ("jobs/specs/debug.yaml", []),
    "r18": (None, ["data.preset=demo", "data.grouping=chest", "data.crop_size=[64,128,128]",
                   "data.eval_window=[64,128,128]", "data.min_size=[64,128,128]", "model.encoder_depth=18",
                   "model.encoder_width=32", "model.stem_kernel=3", "model.text.name_or_path=tiny",
                   "phases.phase3.global_batch_size=8"]),
}


def _spec(size: str, cached: bool):
    from ctvlp.config import load_spec

    path, overrides = SIZES[size]
    return load_spec(path and str(ROOT / path), [*overrides, f"phases.phase3_cached_tokens={str(cached).lower()}",
                                                 "resources.num_workers=1"])


def _step(task, optimizer, batch) -> None:
    import torch

    from ctvlp.loop import to_device

    batch = to_device(batch, torch.device("cpu"))
    losses, _ = task.training_step(batch)
    total = sum(v for k, v in losses.items() if k.endswith("_loss"))
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    task.after_step()


def _task(spec, vision_state=None):
    import torch

    from ctvlp.tasks import build_task

    torch.manual_seed(0)
    task = build_task(spec, 3, init={})
    if vision_state is not None:
        task.module["vision"].load_state_dict(vision_state)
    task.train()
    params = [p for p in task.module.parameters() if p.requires_grad]
    return task, torch.optim.AdamW(params, lr=spec.phases.phase3.lr)


def epoch_through_encoder(spec, rows: list[dict], rng) -> tuple[float, int, object]:
    from ctvlp.data import collate, decode_sample, train_augment

    task, opt = _task(spec)
    b = spec.phases.phase3.global_batch_size
    t0, steps = time.process_time(), 0
    for i in range(0, len(rows) - b + 1, b):
        samples = [train_augment(decode_sample(r), spec.data.crop_size, spec.data.flip_prob, rng)
                   for r in rows[i : i + b]]
        _step(task, opt, collate(samples, volumes="uint8"))
        steps += 1
    return time.process_time() - t0, steps, task.module["vision"].state_dict()


def cache_pass(spec, rows: list[dict], vision_state) -> tuple[float, dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctvlp.data import decode_sample
    from jobs.tokens import window_instances

    task, _ = _task(spec, vision_state)
    vision = task.module["vision"].eval()
    t0 = time.process_time()
    cols: dict[str, list] = {}
    for i in range(0, len(rows), 4):  # the TokenEncoder's map_batches batch size
        part = window_instances(vision, [decode_sample(r) for r in rows[i : i + 4]], spec.data.eval_window)
        for k, v in part.items():
            cols.setdefault(k, []).extend(v)
    pq.write_table(pa.table(cols), io.BytesIO())
    return time.process_time() - t0, cols


def epoch_cached(spec, cols: dict, vision_state, b: int) -> tuple[float, int]:
    import numpy as np

    from jobs.tokens import TokenCollate

    task, opt = _task(spec, vision_state)
    n = len(cols["anatomy"])
    order = np.random.default_rng(0).permutation(n)
    collate = TokenCollate()
    t0, steps = time.process_time(), 0
    for i in range(0, n - b + 1, b):
        idx = order[i : i + b]
        batch = {k: np.asarray([cols[k][j] for j in idx], dtype=object if k == "tokens" else None)
                 for k in ("tokens", "num_tokens", "anatomy", "abnormal")}
        _step(task, opt, collate(batch))
        steps += 1
    return time.process_time() - t0, steps


def rows_for(spec, num_studies: int) -> list[dict]:
    import numpy as np

    from tests.jobs.shards import phantom_row

    d, h, w = spec.data.crop_size
    rng = np.random.default_rng(0)
    return [phantom_row(f"train_{i}", "train", (d + 8, h + 16, w + 16), spec.data.num_anatomies, rng)
            for i in range(num_studies)]


def run(size: str, num_studies: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    image_spec, cached_spec = _spec(size, False), _spec(size, True)
    rows = rows_for(image_spec, num_studies)
    t_img, steps_img, vision = epoch_through_encoder(image_spec, rows, np.random.default_rng(1))
    t_cache, cols = cache_pass(cached_spec, rows, vision)
    b = cached_spec.phases.phase3.global_batch_size
    t_cached, steps_cached = epoch_cached(cached_spec, cols, vision, b)  # as the runner batches rows
    per_study = len(cols["anatomy"]) / num_studies
    b_same = max(1, round(b * per_study))  # as many instances per step as a batch of studies holds
    t_same, steps_same = epoch_cached(cached_spec, cols, vision, b_same)
    m = image_spec.model
    return {
        "size": size, "studies": num_studies, "instances": len(cols["anatomy"]),
        "crop": list(image_spec.data.crop_size), "num_anatomies": image_spec.data.num_anatomies,
        "encoder": f"depth {m.encoder_depth}, width {m.encoder_width}",
        "vqvae": f"dim {m.vq.dim}, depth {m.vq.depth}, codebook {m.vq.codebook_size} x {m.vq.code_dim}",
        "global_batch_size": image_spec.phases.phase3.global_batch_size,
        "epoch_through_encoder_s": t_img, "steps_through_encoder": steps_img,
        "cache_pass_s": t_cache, "epoch_cached_s": t_cached, "steps_cached": steps_cached,
        "speedup": t_img / t_cached,
        "break_even_epochs": t_cache / max(1e-9, t_img - t_cached),
        "cached_batch_same_instances": b_same, "epoch_cached_same_steps_s": t_same,
        "steps_cached_same": steps_same, "speedup_same_steps": t_img / t_same,
        "break_even_epochs_same_steps": t_cache / max(1e-9, t_img - t_same),
        "load_avg_1m_after": os.getloadavg()[0],
    }


def paper_flops() -> dict:
    """FLOPs per study at the paper's size (``paper-abdomen``: ResNet-18 width 64, 96 x 256 x 384,
    M = 16, the defaults' VQ-VAE), counted by ``torch.utils.flop_counter`` (the encoder on the
    meta device): the frozen encoder's forward, which the cache saves, against the VQ-VAE's
    forward + backward on the study's 16 instances, which both paths pay. Token sets are padded
    to the longest in a batch: from all 576 level-4 tokens of a window down to a quarter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ctvlp.config import load_spec
    from ctvlp.losses.normality_vq import normality_vq_loss
    from ctvlp.models.visd import build_vision_model
    from ctvlp.models.vqvae import build_vqvae

    spec = load_spec(None, ["data.preset=paper-abdomen"])
    m = spec.data.num_anatomies
    with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as fc:
        vision = build_vision_model(spec.model, m, hu_window=spec.data.hu_window).eval()
        tokens, _ = vision.encode(torch.zeros(1, 1, *spec.data.crop_size))
    encoder = fc.get_total_flops()
    window_tokens = tokens[-1].shape[1]
    out = {"encoder_forward_tflop": encoder / 1e12, "window_tokens": window_tokens, "vqvae": {}}
    for length in (window_tokens, window_tokens // 2, window_tokens // 4):
        torch.manual_seed(0)
        vq = build_vqvae(spec.model, m)
        toks = torch.randn(m, length, spec.model.token_dim)
        with FlopCounterMode(display=False) as fc:
            res = vq(toks, torch.ones(m, length, dtype=torch.bool), torch.arange(m))
            terms = normality_vq_loss(res, toks, spec.model.vq.beta)
            (terms["recon"] + terms["commitment"]).backward()
        vq_flops = fc.get_total_flops()
        out["vqvae"][length] = {"tflop": vq_flops / 1e12, "speedup_bound": (encoder + vq_flops) / vq_flops}
    return out


def _epochs(x: float) -> str:
    return f"{x:.2f} epochs" if x < 1e6 else "never (cached epoch not faster)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="r18")
    ap.add_argument("--studies", type=int, default=16)
    args = ap.parse_args(argv)
    result = run(args.size, args.studies)
    out = ROOT / "bench" / "results"
    path = out / "phase3_cache.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs.pop("paper_flops", None)
    runs[args.size] = result | {"command": f"python bench/phase3_cache.py --size {args.size} --studies {args.studies}"}
    flops = paper_flops()
    path.write_text(json.dumps(runs | {"paper_flops": flops}, indent=1))
    lines = ["# Phase 3: cached tokens against the frozen encoder (one core, CPU seconds)", "",
             "Same studies (phantom shard rows), same model, same global batch; one epoch each; "
             "the cache pass encodes one window per present anatomy. Break-even = cache pass / "
             "(epoch through the encoder - epoch on cached tokens).", "",
             "Two cached epochs: rows batched as the runner batches them (`global_batch_size` "
             "instances per step: M times the steps of an epoch through the encoder), and with as "
             "many instances per step as a batch of studies yields (the same number of steps).", "",
             "| size | encoder | VQ-VAE | crop | studies / instances | epoch via encoder (s, steps) | cache pass (s) "
             "| epoch cached, runner's batches (s, steps) | speed-up | break-even | "
             "epoch cached, same steps (s, steps) | speed-up | break-even | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (v for k, v in runs.items() if k != "paper_flops"):
        lines.append(f"| {r['size']} | {r['encoder']} | {r['vqvae']} | {'x'.join(map(str, r['crop']))} | "
                     f"{r['studies']} / {r['instances']} | {r['epoch_through_encoder_s']:.1f}, "
                     f"{r['steps_through_encoder']} | {r['cache_pass_s']:.1f} | {r['epoch_cached_s']:.2f}, "
                     f"{r['steps_cached']} | **{r['speedup']:.1f}x** | {_epochs(r['break_even_epochs'])} | "
                     f"{r['epoch_cached_same_steps_s']:.2f}, {r['steps_cached_same']} | "
                     f"**{r['speedup_same_steps']:.1f}x** | {_epochs(r['break_even_epochs_same_steps'])} | "
                     f"{r['load_avg_1m_after']:.1f} |")
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for k, r in runs.items() if k != "paper_flops"), "",
              "## At the paper's size (FLOPs, not timed)", "",
              f"Per study (`paper-abdomen`, M = 16): the frozen encoder's forward is "
              f"{flops['encoder_forward_tflop']:.2f} TFLOP, which the cache saves; the VQ-VAE's forward + "
              "backward on the study's instances, which both paths pay:", "",
              "| tokens per instance (padded) | VQ-VAE TFLOP | speed-up bound (FLOPs) |", "|---|---|---|"]
    lines += [f"| {n} | {v['tflop']:.2f} | {v['speedup_bound']:.1f}x |" for n, v in flops["vqvae"].items()]
    lines += ["", "The goal of 10x is out of reach of any cache here: phase 3 trains a 28M-parameter "
              "transformer VQ-VAE on every anatomy's token set, and that work is the same whether the "
              "tokens come from a cache or from the encoder."]
    (out / "phase3_cache.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU acceptance: every phase's real training step, the bare encoder, and evaluation, in one call.

What it runs (issue 16 item 5, issue 26): for M = 4 (chest grouping) and M = 16 (chest-abdomen),
at B = 12 and a 96 x 256 x 384 crop, each phase's training step exactly as a Ray Train worker
runs it, minus Ray: ``ctvlp.tasks.build_task`` -> ``ctvlp.loop.build_engine`` (DeepSpeed, torch
AdamW, bf16 autocast on float32 weights, channels_last_3d on CUDA) -> ``ctvlp.loop.train_step``
(forward, backward, clip, step, ``after_step``), on synthetic batches in the collate contract.
Beside them, in the same process and on the same batch: the bare 3D ResNet forward + backward +
AdamW under the same autocast (the reference every phase is a ratio of), and the evaluation
forward (``ctvlp.eval.embed.EvalModel`` of a phase-4 export in bf16) in windows/s.

Figures per entry: samples/s (median over timed steps), peak GPU memory, FLOPs of one step from
``torch.utils.flop_counter.FlopCounterMode`` and MFU = FLOPs / step time / the GPU's dense bf16
peak (``PEAK_BF16_TFLOPS``; unknown GPUs get no MFU). The JSON is rewritten after every entry,
so a timeout still returns what was measured.

The GPU machine has PyTorch, transformers, numpy and pyyaml but not pydantic or DeepSpeed:
``bench/gpu_wheels.sh`` downloads the missing wheels into ``.whl`` (~6 MB), which the call carries
(see the command in bench/results/gpu_acceptance.md). The text encoder is a BERT-base-sized
``BertConfig`` with random weights saved to a temporary directory and loaded through the
production path (``model.text.name_or_path`` = that directory); random weights change no cost.

The device call (after ``bash bench/gpu_wheels.sh`` here; carry ``.whl``; ~5 minutes):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:platform:. PYTHONUNBUFFERED=1 \
      && timeout 290 python3 bench/gpu_acceptance.py --out $OUT/gpu_acceptance.json
then copy $OUT/gpu_acceptance.{json,md} to bench/results/.

Usage (GPU):  PYTHONPATH=platform:. python bench/gpu_acceptance.py          (fits one 5-minute call)
      (CPU):  PYTHONPATH=platform:. python bench/gpu_acceptance.py --small  (smoke run, ~1 min)
Writes bench/results/gpu_acceptance.{json,md} (``--small``: gpu_acceptance_small.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]

PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0}
GROUPINGS = {4: "chest", 16: "chest-abdomen"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CPU smoke sizes (debug model, 32x64x64, B=2)")
    p.add_argument("--batch", type=int, default=None, help="B (default 12; --small 2)")
    p.add_argument("--crop", type=int, nargs=3, default=None, help="D H W (default 96 256 384)")
    p.add_argument("--anatomies", type=int, nargs="+", default=[4, 16], choices=sorted(GROUPINGS))
    p.add_argument("--phases", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=None, help="timed steps per entry (default 6; --small 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--budget-s", type=float, default=270.0, help="skip entries once this much time has passed")
    args = p.parse_args(argv)
    args.batch = args.batch or (2 if args.small else 12)
    args.crop = tuple(args.crop or ((32, 64, 64) if args.small else (96, 256, 384)))
    args.steps = args.steps or (2 if args.small else 6)
    stem = "gpu_acceptance_small" if args.small else "gpu_acceptance"
    args.out = args.out or ROOT / "bench" / "results" / f"{stem}.json"
    return args


# ------------------------------------------------------------------------------------ the spec
def text_backbone_dir(small: bool) -> str:
    """'tiny' for smoke runs; else a BERT-base-sized random BertModel saved where AutoModel loads it."""
    if small:
        return "tiny"
    from transformers import BertConfig, BertModel

    from ctvlp.models.text import build_tokenizer

    path = Path(tempfile.mkdtemp(prefix="ctvlp-bert-base-"))
    BertModel(BertConfig(), add_pooling_layer=False).save_pretrained(path)  # 12 x 768, 110 M params
    build_tokenizer("tiny").save_pretrained(path)  # ids < 234: valid for any BERT vocabulary
    return str(path)


def make_spec(args: argparse.Namespace, m: int, text: str, cuda: bool) -> Any:
    from ctvlp.config import load_spec

    crop = "[" + ",".join(map(str, args.crop)) + "]"
    over = [f"data.grouping={GROUPINGS[m]}", f"data.crop_size={crop}", f"data.min_size={crop}",
            f"data.eval_window={crop}", f"model.text.name_or_path={text}", "resources.bf16=true",
            f"resources.use_gpu={str(cuda).lower()}", "resources.num_workers=1"]
    over += [f"phases.phase{p}.global_batch_size={args.batch}" for p in (1, 2, 3, 4)]
    base = ROOT / "jobs" / "specs" / ("debug.yaml" if args.small else "defaults.yaml")
    return load_spec(str(base) if args.small else None, over)


def synthetic_batch(b: int, crop: tuple[int, int, int], m: int, device: torch.device,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """The collate contract: image [B, 1, D, H, W] in [0, 1], mask [B, D, H, W] with M boxes in a
    grid (off the crop faces, so every anatomy is intact), abnormal [B, M] (~30 %), text ids/mask
    [B, M, T] of 8-32 tokens."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = crop
    rows = math.ceil(math.sqrt(m))
    cols = math.ceil(m / rows)
    image = torch.rand(b, 1, d, h, w, generator=g)
    mask = torch.zeros(b, d, h, w, dtype=torch.long)
    for j in range(m):
        r, c = divmod(j, cols)
        h0, h1 = r * h // rows + 2, (r + 1) * h // rows - 2
        w0, w1 = c * w // cols + 2, (c + 1) * w // cols - 2
        mask[:, d // 8 : d - d // 8, h0:h1, w0:w1] = j + 1
    lengths = torch.randint(8, 33, (b, m), generator=g)
    t = int(lengths.max())
    ids = torch.randint(5, 200, (b, m, t), generator=g)
    ids[..., 0] = 2  # [CLS]
    text_mask = (torch.arange(t) < lengths[..., None]).long()
    batch = {"image": image, "mask": mask, "abnormal": (torch.rand(b, m, generator=g) < 0.3).long(),
             "text_ids": ids * text_mask, "text_mask": text_mask}
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def measure(fn: Callable[[], Any], samples_per_step: int, device: torch.device, args, peak_tflops) -> dict:
    """Warm-up, FLOPs of one call, then ``args.steps`` timed calls (median)."""
    for _ in range(args.warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flops = step_flops(fn)
    times = []
    for _ in range(args.steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    out = {"step_s": sec, "samples_per_s": samples_per_step / sec, "tflop_per_step": flops / 1e12,
           "achieved_tflops": flops / sec / 1e12}
    if peak_tflops:
        out["mfu"] = flops / sec / (peak_tflops * 1e12)
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def phase_entry(spec: Any, phase: int, batch: dict, device: torch.device, args, peak) -> dict:
    """One phase's real training step (task + DeepSpeed engine + train_step)."""
    from ctvlp.loop import build_engine, train_config_from_spec, train_step
    from ctvlp.tasks import build_task

    cfg = train_config_from_spec(spec, phase, cuda=device.type == "cuda")
    torch.manual_seed(0)
    task = build_task(spec, phase, init={})
    task.module.to(device)
    engine = build_engine(task.module, cfg, steps_per_epoch=1000)
    task.train()
    result = measure(lambda: train_step(engine, task, batch, channels_last=cfg.channels_last),
                     args.batch, device, args, peak)
    result.update(bf16=cfg.bf16, channels_last=cfg.channels_last, zero_stage=cfg.zero_stage,
                  trainable_params_m=sum(p.numel() for p in task.trainable_parameters()) / 1e6)
    del engine, task
    return result


def encoder_entry(spec: Any, batch: dict, device: torch.device, args, peak) -> dict:
    """The bare 3D ResNet forward + backward + AdamW under the same autocast: the reference."""
    from ctvlp.models.visd import build_vision_model
    from ctvlp.precision import bf16_autocast

    torch.manual_seed(0)
    cuda = device.type == "cuda"
    net = build_vision_model(spec.model, spec.data.num_anatomies, hu_window=spec.data.hu_window).encoder.to(device)
    image = batch["image"]
    if cuda:
        net.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step():
        with bf16_autocast(device, enabled=True):
            out = net(image)
            loss = sum(t.float().mean() for t in (out[0] if isinstance(out, tuple) else out))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return measure(step, args.batch, device, args, peak)


def eval_entry(spec: Any, batch: dict, device: torch.device, args, peak) -> dict:
    """Evaluation forward of a phase-4 export in bf16 (windows/s)."""
    from ctvlp.eval.embed import EvalModel
    from ctvlp.tasks import build_task

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        build_task(spec, 4, init={}).export(tmp)
        model = EvalModel.from_export(tmp, device=str(device), bf16=True)
    return measure(lambda: model.forward_windows(batch["image"], batch["mask"]), args.batch, device, args, peak)


# ------------------------------------------------------------------------------------- driver
def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "load_avg_1m": os.getloadavg()[0]}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        try:
            import subprocess

            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    return env


def peak_for(env: dict) -> float | None:
    name = env.get("gpu", "")
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def write(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    path.with_suffix(".md").write_text(render_md(results))


def render_md(results: dict) -> str:
    env = results["env"]
    lines = [f"# GPU acceptance ({'CPU smoke run, NOT the paper size' if results['config']['small'] else 'paper size'})",
             "", f"`{results['command']}`", "",
             ", ".join(f"{k} {v}" for k, v in sorted(env.items())), "",
             f"B = {results['config']['batch']}, crop {results['config']['crop']}, bf16 autocast; "
             "ratio = samples/s relative to the bare encoder at the same M.", "",
             "| entry | M | samples/s | ratio | step s | TFLOP/step | MFU | peak GiB |", "|---|---|---|---|---|---|---|---|"]
    for key, r in results["entries"].items():
        if "error" in r:
            lines.append(f"| {key} | | error: {r['error'][:80]} | | | | | |")
            continue
        m = key.split("/M")[-1] if "/M" in key else ""
        ref = results["entries"].get(f"encoder/M{m}", {}).get("samples_per_s")
        ratio = f"{r['samples_per_s'] / ref:.2f}" if ref else ""
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else ""
        mem = f"{r['peak_mem_gib']:.1f}" if "peak_mem_gib" in r else ""
        lines.append(f"| {key.split('/M')[0]} | {m} | {r['samples_per_s']:.2f} | {ratio} | {r['step_s']:.3f} | "
                     f"{r['tflop_per_step']:.2f} | {mfu} | {mem} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    from ctvlp.loop import ensure_process_group

    ensure_process_group()
    env = environment(device)
    peak = peak_for(env)
    results = {"command": "python bench/gpu_acceptance.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "config": {"small": args.small, "batch": args.batch, "crop": list(args.crop),
                          "steps": args.steps, "warmup": args.warmup, "peak_bf16_tflops": peak},
               "env": env, "entries": {}}
    start = time.perf_counter()
    text = text_backbone_dir(args.small)
    for m in args.anatomies:
        spec = make_spec(args, m, text, cuda)
        batch = synthetic_batch(args.batch, args.crop, m, device)
        stages: list[tuple[str, Callable[[], dict]]] = [("encoder", lambda: encoder_entry(spec, batch, device, args, peak))]
        stages += [(f"phase{p}", lambda p=p: phase_entry(spec, p, batch, device, args, peak)) for p in args.phases]
        stages.append(("eval", lambda: eval_entry(spec, batch, device, args, peak)))
        for name, run in stages:
            key = f"{name}/M{m}"
            if time.perf_counter() - start > args.budget_s:
                results["entries"][key] = {"error": f"skipped: past the {args.budget_s:.0f} s budget"}
                continue
            try:
                results["entries"][key] = run()
            except Exception as err:  # noqa: BLE001 - record and go on: one failure must not lose the rest
                results["entries"][key] = {"error": f"{type(err).__name__}: {err}"}
            finally:
                if cuda:
                    torch.cuda.empty_cache()
            results["elapsed_s"] = time.perf_counter() - start
            write(results, args.out)
            print(key, json.dumps(results["entries"][key]), flush=True)
    return results


if __name__ == "__main__":
    main()

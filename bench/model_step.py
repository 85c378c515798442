"""Training-step throughput and peak memory of the ViSD-Boost model parts (issue 4 bench).

Measures, at the paper's size (B=12, 96x256x384 crop, bf16 autocast, channels_last_3d) by default:

- ``encoder``: the bare 3D ResNet forward+backward (+ AdamW step): the baseline;
- ``encoder_contiguous``: the same without channels_last_3d (reference: 33 vs 45 samples/s, H200);
- per M (4 = chest preset, 36 = paper): ``flags`` (token flags + intactness, no grad),
  ``pooling`` (query pooling fwd+bwd on fixed tokens), ``text`` (text encoder fwd+bwd on the
  intact anatomies' texts, dynamically padded), ``vision`` (encoder + tokens + flags + pooling),
  and ``phase2`` (vision + text + anatomy-wise InfoNCE + AdamW): the phase-2 step.

Self-contained: needs only torch and ``PYTHONPATH=platform`` (the models import no Ray/MONAI). The
text encoder is a BERT-base-sized ``transformers.BertModel`` (random weights) when transformers
is importable, else a plain-torch ``nn.TransformerEncoder`` stand-in of the same size (12 layers,
768 wide, 12 heads, FFN 3072); the record says which. The InfoNCE here is a compact inline
version of eq. 1 (hard targets, symmetric, mean over intact (sample, anatomy) pairs), so the bench
does not depend on ``ctvlp.losses``; its cost is negligible next to the encoder.

Usage (GPU):  PYTHONPATH=platform python bench/model_step.py
      (CPU):  PYTHONPATH=platform python bench/model_step.py --small   (smoke run, < 1 min)
Writes bench/results/model_step.{json,md} (``--small``: model_step_small.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import platform as pyplatform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from ctvlp.models.pooling import AnatomyQueryPooling  # noqa: E402
from ctvlp.models.resnet3d import ResNet3dBackbone, stage_grid_shapes  # noqa: E402
from ctvlp.models.text import LearnableTemperature, TextEncoder  # noqa: E402
from ctvlp.models.tokens import anatomy_token_flags, intact_anatomies  # noqa: E402
from ctvlp.models.visd import VisionModel  # noqa: E402


class StandInText(nn.Module):
    """BERT-shaped plain-torch encoder: ``forward(input_ids, attention_mask).last_hidden_state``."""

    def __init__(self, hidden=768, layers=12, heads=12, ffn=3072, vocab=30522, max_len=512):
        super().__init__()
        self.config = type("Cfg", (), {"hidden_size": hidden})()
        self.tok, self.pos = nn.Embedding(vocab, hidden), nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, 0.1, "gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.tok(input_ids) + self.pos(pos))
        out = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        return type("Out", (), {"last_hidden_state": out})()


def build_text(kind: str, small: bool) -> tuple[nn.Module, str]:
    dims = dict(hidden=64, layers=2, heads=4, ffn=128) if small else {}
    if kind in ("auto", "bert"):
        try:
            from transformers import BertConfig, BertModel

            cfg = BertConfig(hidden_size=dims.get("hidden", 768), num_hidden_layers=dims.get("layers", 12),
                             num_attention_heads=dims.get("heads", 12), intermediate_size=dims.get("ffn", 3072))
            return BertModel(cfg, add_pooling_layer=False), "transformers.BertModel (random init)"
        except ImportError:
            if kind == "bert":
                raise
    return StandInText(**dims), "plain-torch nn.TransformerEncoder stand-in (BERT-shaped)"


def synthetic_batch(b, size, m, device, seed=0):
    """Image [B,1,D,H,W] in [0,1], mask with M random boxes (later overwrite earlier; some touch a
    face, so roughly half are intact), and dynamically padded texts [B, M, T] of 6..48 tokens."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 1, *size, generator=g)
    mask = torch.zeros(b, *size, dtype=torch.long)
    for i in range(b):
        for j in range(m):
            ext = [max(2, int(n * (0.1 + 0.3 * torch.rand(1, generator=g).item()))) for n in size]
            lo = [int(torch.randint(0, n - e + 1, (1,), generator=g)) for n, e in zip(size, ext)]
            mask[i, lo[0]:lo[0] + ext[0], lo[1]:lo[1] + ext[1], lo[2]:lo[2] + ext[2]] = j + 1
    lens = torch.randint(6, 49, (b, m), generator=g)
    t = int(lens.max())
    text_mask = (torch.arange(t) < lens[..., None]).long()
    text_ids = torch.randint(1000, 30000, (b, m, t), generator=g) * text_mask
    return {k: v.to(device) for k, v in
            dict(image=image, mask=mask, text_ids=text_ids, text_mask=text_mask).items()}


def infonce(img, txt, intact, tau):
    """Eq. 1 (hard targets), batched over anatomies: img/txt [B, M, E], intact [B, M] -> scalar."""
    logits = torch.einsum("bme,cme->mbc", img.float(), txt.float()) / tau  # [M, B_img, B_txt]
    ok = intact.T  # [M, B]
    pair = ok[:, :, None] & ok[:, None, :]
    # A large finite fill, not -inf: rows of non-intact samples stay finite, so torch.where below
    # gives them zero gradient instead of NaN.
    logits = logits.masked_fill(~pair, -1e9)
    diag = torch.diagonal(logits, dim1=1, dim2=2)  # [M, B]
    i2t = torch.logsumexp(logits, 2) - diag
    t2i = torch.logsumexp(logits, 1) - diag
    per = torch.where(ok, (i2t + t2i) / 2, torch.zeros_like(diag))
    return per.sum() / ok.sum().clamp(min=1)


def measure(fn, steps, warmup, device, samples):
    """Time ``fn`` (one training step); a failure (e.g. out of memory) is recorded, not raised,
    so one oversized configuration does not lose the others' figures."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        for _ in range(warmup):
            fn()
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:  # OOM is a RuntimeError subclass
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"ms_per_step": round(dt * 1e3, 2), "samples_per_s": round(samples / dt, 2),
            "peak_mem_gib": None if peak is None else round(peak, 2)}


def _opt(params):
    params = [p for p in params if p.requires_grad]
    fused = params[0].is_cuda
    return torch.optim.AdamW(params, lr=1e-5, fused=fused)


def bench_encoder(args, device, channels_last):
    net = ResNet3dBackbone(args.depth, args.width).to(device)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = _opt(net.parameters())
    image = torch.rand(args.batch, 1, *args.size, device=device).contiguous(memory_format=fmt)

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
            loss = sum(o.float().mean() for o in net(image))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return measure(step, args.steps, args.warmup, device, args.batch)


def _train_step(loss_fn, opt):
    def step():
        loss_fn().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_parts(args, device, m, batch, intact, ac):
    """The phase-2 parts in isolation: flags (no grad), pooling and text fwd+bwd+AdamW."""
    res, run = {}, lambda fn: measure(fn, args.steps, args.warmup, device, args.batch)
    res["flags"] = run(lambda: (anatomy_token_flags(batch["mask"], m), intact_anatomies(batch["mask"], m)))
    pool = AnatomyQueryPooling(m, args.token_dim, args.embed_dim, 4).to(device)
    toks = [torch.randn(args.batch, d * h * w, args.token_dim, device=device, requires_grad=True)
            for d, h, w in stage_grid_shapes(args.size)]
    flags = anatomy_token_flags(batch["mask"], m)

    def pool_loss():
        with torch.autocast(**ac):
            return pool(toks, flags)["embeds"].float().sum()

    res["pooling"] = run(_train_step(pool_loss, _opt(pool.parameters())))
    del pool, toks
    backbone, res["text_backbone"] = build_text(args.text, args.small)
    text = TextEncoder(backbone, args.embed_dim, "query", num_queries=m,
                       temperature=LearnableTemperature()).to(device)
    sel = intact.nonzero()  # texts only of intact anatomies: the only ones the loss uses
    ids, tmask = batch["text_ids"][sel[:, 0], sel[:, 1]], batch["text_mask"][sel[:, 0], sel[:, 1]]
    res["text_tokens"] = [int(ids.shape[0]), int(ids.shape[1])]

    def text_loss():
        with torch.autocast(**ac):
            return text(ids, tmask, sel[:, 1]).float().sum()

    res["text"] = run(_train_step(text_loss, _opt(text.parameters())))
    return res, text, (sel, ids, tmask)


def bench_anatomies(args, device, m):
    """flags / pooling / text / vision / phase2 at M anatomies."""
    fmt = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    batch = synthetic_batch(args.batch, args.size, m, device)
    image = batch["image"].contiguous(memory_format=fmt)
    ac = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.no_grad():
        intact = intact_anatomies(batch["mask"], m)
    res, text, (sel, ids, tmask) = bench_parts(args, device, m, batch, intact, ac)
    res["intact_per_step"] = int(intact.sum())
    vision = VisionModel(m, args.depth, args.width, args.token_dim, args.embed_dim, 4).to(device)
    vision = vision.to(memory_format=fmt)
    opt = _opt(list(vision.parameters()) + list(text.parameters()))

    def vision_loss():
        with torch.autocast(**ac):
            return vision(image, batch["mask"])["embeds"].float().sum()

    def phase2_loss():
        with torch.autocast(**ac):
            out = vision(image, batch["mask"])
            txt = torch.zeros_like(out["embeds"])
            txt = txt.index_put((sel[:, 0], sel[:, 1]), text(ids, tmask, sel[:, 1]).to(txt.dtype))
            return infonce(out["embeds"], txt, out["intact"], text.temperature())

    run = lambda fn: measure(fn, args.steps, args.warmup, device, args.batch)  # noqa: E731
    res["vision"] = run(_train_step(vision_loss, opt))
    res["phase2"] = run(_train_step(phase2_loss, opt))
    return res


def versions(device):
    info = {"python": pyplatform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def to_markdown(record) -> str:
    cfg = record["config"]
    lines = [f"# model_step ({'CPU smoke run, NOT the paper size' if cfg['small'] else 'paper size'})", "",
             f"B={cfg['batch']}, crop {tuple(cfg['size'])}, ResNet-{cfg['depth']} width {cfg['width']}, "
             f"bf16={cfg['bf16']}, channels_last_3d={cfg['channels_last']}; versions: "
             + ", ".join(f"{k}={v}" for k, v in record["versions"].items()), "",
             "| part | M | ms/step | samples/s | peak GiB | vs encoder |", "|---|---|---|---|---|---|"]
    base = record["encoder"].get("samples_per_s")

    def row(name, m, r):
        if "error" in r:
            lines.append(f"| {name} | {m} | failed: {r['error']} | | | |")
            return
        ratio = f"{r['samples_per_s'] / base:.2f}" if base and name in ("vision", "phase2") else ""
        lines.append(f"| {name} | {m} | {r['ms_per_step']} | {r['samples_per_s']} | {r['peak_mem_gib']} | {ratio} |")

    row("encoder (channels_last_3d)" if cfg["channels_last"] else "encoder", "-", record["encoder"])
    if "encoder_contiguous" in record:
        row("encoder (contiguous)", "-", record["encoder_contiguous"])
    for m, res in record["per_m"].items():
        for part in ("flags", "pooling", "text", "vision", "phase2"):
            row(part, m, res[part])
    lines += ["", "text: " + "; ".join(f"M={m}: {r['text_backbone']}, texts x T = {r['text_tokens']}, "
                                      f"intact pairs {r['intact_per_step']}" for m, r in record["per_m"].items())]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="CPU-sized smoke run (< 1 min)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--size", type=int, nargs=3, default=[96, 256, 384], metavar=("D", "H", "W"))
    p.add_argument("--depth", default="18")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--token-dim", type=int, default=256)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--anatomies", type=int, nargs="+", default=[4, 36])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--text", choices=["auto", "bert", "standin"], default="auto")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    if args.small:  # fp32: bf16 autocast of conv3d on CPU is an order of magnitude slower
        args.batch, args.size, args.depth, args.width = 2, [16, 32, 32], "debug", 8
        args.token_dim, args.embed_dim, args.steps, args.warmup, args.bf16 = 32, 32, 1, 1, False
    args.size = tuple(args.size)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    record = {"config": {k: v for k, v in vars(args).items() if k != "out_dir"}, "versions": versions(device)}
    record["encoder"] = bench_encoder(args, device, args.channels_last)
    print("encoder", record["encoder"], flush=True)
    if args.channels_last:
        record["encoder_contiguous"] = bench_encoder(args, device, False)
        print("encoder_contiguous", record["encoder_contiguous"], flush=True)
    record["per_m"] = {}
    for m in args.anatomies:
        record["per_m"][str(m)] = bench_anatomies(args, device, m)
        print(f"M={m}", json.dumps(record["per_m"][str(m)]), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "model_step_small" if args.small else "model_step"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(record))
    print(to_markdown(record))


if __name__ == "__main__":
    main()

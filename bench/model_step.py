"""Training-step throughput and peak memory of the ViSD-Boost model parts and of each phase's
training step (issue 4 bench).

Measures, at the paper's size (B=12, 96x256x384 crop, bf16 autocast, channels_last_3d) by default:

- ``encoder``: the bare 3D ResNet forward+backward (+ AdamW step): the baseline;
- ``encoder_contiguous``: the same without channels_last_3d (reference: 33 vs 45 samples/s, H200);
- per M (4 = chest preset, 36 = paper): ``flags`` (token flags + intactness, no grad),
  ``pooling`` (query pooling fwd+bwd on fixed tokens), ``text`` (text encoder fwd+bwd on the
  intact anatomies' texts, dynamically padded), ``vision`` (encoder + tokens + flags + pooling),
  and one full training step (forward, backward, AdamW, plus what the task does after the step)
  of each phase, mirroring ``ctvlp.tasks.phase{1,2,3,4}``:

  * ``phase1``: online vision model on the image + EMA momentum copy (no grad) on a second
    augmented view, eq.-2 disease contrastive loss (``abnormal``: ~30% random labels), EMA update;
  * ``phase2``: vision + text + anatomy-wise InfoNCE (eq. 1);
  * ``phase3``: frozen vision encoder (eval, no grad) -> level-4 token sets of the intact
    anatomies -> the normal ones through the normality VQ-VAE (train mode, EMA codebook) with the
    eq.-3 loss; only the VQ-VAE trains. VQ sizes: ``jobs/specs/defaults.yaml`` ``model.vq``,
    scaled by token_dim / 256 in ``--small``;
  * ``phase4``: boosted forward (vision, frozen VQ-VAE in eval without grad, new perception MLP)
    + text + eq. 1; vision, text and perception train.

  Each phase builds its own modules and optimiser and frees them afterwards, so its peak memory
  holds only its own parts (plus the batch, shared by all entries: ``batch_gib``).

Self-contained: needs only torch and ``PYTHONPATH=platform``. It imports torch-only modules of
``ctvlp.models`` and ``ctvlp.losses`` (no pydantic/Ray/MONAI/yaml/pandas), never ``ctvlp.config``
or ``ctvlp.tasks`` (pydantic); the few task-level lines it needs (phase 1's ``second_view``,
phase 3's ``token_instances``, the spec defaults below) are copied here, and
``tests/ctvlp/test_bench_model_step.py`` checks them against the tasks and the default spec. The
text encoder is a BERT-base-sized ``transformers.BertModel`` (random weights) when transformers
is importable, else a plain-torch ``nn.TransformerEncoder`` stand-in of the same size (12 layers,
768 wide, 12 heads, FFN 3072); the record says which. The InfoNCE of phases 2 and 4 is a compact
inline version of eq. 1 (hard targets, symmetric, mean over intact (sample, anatomy) pairs); its
cost is negligible next to the encoder. All weights are random (phase 3/4 do not load phase 2/3
exports), which changes no shape and hence no cost, except which codes the VQ picks.

Usage (GPU):  PYTHONPATH=platform python bench/model_step.py   (fits one 10-minute call)
      (CPU):  PYTHONPATH=platform python bench/model_step.py --small   (smoke run, ~1-2 min)
Writes bench/results/model_step.{json,md} (``--small``: model_step_small.{json,md}).
"""

from __future__ import annotations

import argparse
import gc
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

from ctvlp.losses.disease_contrastive import disease_contrastive_loss  # noqa: E402
from ctvlp.losses.normality_vq import normality_vq_loss, select_normal  # noqa: E402
from ctvlp.models.boost import boosted_forward, encode_tokens, level4_instances  # noqa: E402
from ctvlp.models.momentum import MomentumEncoder  # noqa: E402
from ctvlp.models.perception import AbnormalityPerception  # noqa: E402
from ctvlp.models.pooling import AnatomyQueryPooling  # noqa: E402
from ctvlp.models.resnet3d import ResNet3dBackbone, stage_grid_shapes  # noqa: E402
from ctvlp.models.text import LearnableTemperature, TextEncoder  # noqa: E402
from ctvlp.models.tokens import anatomy_token_flags, intact_anatomies  # noqa: E402
from ctvlp.models.visd import VisionModel  # noqa: E402
from ctvlp.models.vqvae import NormalityVQVAE, VQConfig  # noqa: E402

# jobs/specs/defaults.yaml ``model.*`` values the phase steps use (copied: ctvlp.config needs
# pydantic/yaml; the test compares them with the default spec).
POOL_HEADS = 4  # model.pool_heads
MOMENTUM = 0.995  # model.momentum (phase 1 EMA decay)
DISEASE_TEMPERATURE = 0.07  # model.disease_temperature
DISEASE_POSITIVES = "sum"  # model.disease_positives
PERCEPTION_ACTIVATION = "gelu"  # model.perception_activation
VQ_DEFAULTS = dict(codebook_size=100, code_dim=1024, beta=0.25, decay=0.99, eps=1.0e-5, dim=768,
                   depth=2, heads=16, dim_head=64, mlp_dim=2048, dropout=0.1, search="anatomy",
                   condition="embedding", hidden_dim=512, ema_bias_correction=True,
                   dead_code_threshold=0.5)  # model.vq
VQ_WIDTHS = ("code_dim", "dim", "dim_head", "mlp_dim", "hidden_dim")  # scaled with token_dim
# Which parts of each phase's step train and which are frozen (no gradient), as in ctvlp.tasks.
PHASES = {
    "phase1": {"trains": "vision (encoder + pooling)",
               "frozen": "momentum copy of vision (EMA, eval mode, forward without autograd)"},
    "phase2": {"trains": "vision, text", "frozen": "none"},
    "phase3": {"trains": "VQ-VAE (EMA codebook updated in its forward)",
               "frozen": "vision encoder (eval mode, token forward under no_grad)"},
    "phase4": {"trains": "vision, text, perception MLP (new)",
               "frozen": "VQ-VAE (eval mode, reconstruction under no_grad, no codebook update)"},
}


def vq_config(token_dim: int, num_anatomies: int) -> VQConfig:
    """``model.vq`` of the default spec; widths scaled by token_dim / 256 (so --small stays small
    and proportional; at the paper's token_dim 256 these are the defaults exactly)."""
    scale = token_dim / 256
    kw = {k: max(1, round(v * scale)) if k in VQ_WIDTHS else v for k, v in VQ_DEFAULTS.items()}
    return VQConfig(token_dim=token_dim, num_anatomies=num_anatomies, **kw)


def second_view(image: torch.Tensor, mask: torch.Tensor, flip_prob: float = 0.5,
                intensity: float = 0.1, noise: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy of ``ctvlp.tasks.phase1.second_view`` (that module imports pydantic via ctvlp.config):
    per-sample flips of D/H/W, scale/shift jitter, noise. image [B,1,D,H,W], mask [B,D,H,W]."""
    image, mask = image.clone(), mask.clone()
    b = image.shape[0]
    flips = torch.rand(b, 3, device=image.device) < flip_prob  # [B, 3] one draw per sample/axis
    for i in range(b):
        axes = [a for a in range(3) if flips[i, a]]
        if axes:
            image[i] = image[i].flip([a + 1 for a in axes])
            mask[i] = mask[i].flip(axes)
    scale = 1.0 + intensity * (2 * torch.rand(b, 1, 1, 1, 1, device=image.device) - 1)
    shift = intensity * 0.5 * (2 * torch.rand(b, 1, 1, 1, 1, device=image.device) - 1)
    image = image * scale + shift + noise * torch.randn_like(image)
    return image.clamp(0, 1), mask


@torch.no_grad()
def token_instances(vision: VisionModel, image: torch.Tensor, mask: torch.Tensor,
                    abnormal: torch.Tensor) -> dict[str, torch.Tensor]:
    """Copy of ``ctvlp.tasks.phase3.token_instances``: level-4 token sets of every intact anatomy
    (frozen encoder, no grad) -> tokens [N, L4, C], token_mask [N, L4], anatomy/abnormal/sample [N]."""
    enc = encode_tokens(vision, image, mask)
    t, tm, a, s = level4_instances(enc["tokens"][-1], enc["flags"][-1], enc["intact"])
    return {"tokens": t, "token_mask": tm, "anatomy": a, "abnormal": abnormal[s, a].long(), "sample": s}


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
    face, so roughly half are intact), dynamically padded texts [B, M, T] of 6..48 tokens and
    ``abnormal`` [B, M] int64 labels (each 1 with probability 0.3)."""
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
    abnormal = (torch.rand(b, m, generator=g) < 0.3).long()  # drawn last: earlier keys unchanged
    return {k: v.to(device) for k, v in dict(image=image, mask=mask, text_ids=text_ids,
                                             text_mask=text_mask, abnormal=abnormal).items()}


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


def make_data(args, device, m):
    """The synthetic batch at M anatomies and what every entry shares: (batch, image in the
    bench's memory format, autocast kwargs, (sel [N, 2] intact (sample, anatomy), their text ids
    and masks [N, T]))."""
    fmt = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    batch = synthetic_batch(args.batch, args.size, m, device)
    image = batch["image"].contiguous(memory_format=fmt)
    ac = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.no_grad():
        intact = intact_anatomies(batch["mask"], m)
    sel = intact.nonzero()  # texts only of intact anatomies: the only ones the loss uses
    ids, tmask = batch["text_ids"][sel[:, 0], sel[:, 1]], batch["text_mask"][sel[:, 0], sel[:, 1]]
    return batch, image, ac, (sel, ids, tmask)


def bench_parts(args, device, m, data):
    """The phase-2 parts in isolation: flags (no grad), pooling and text fwd+bwd+AdamW."""
    batch, _, ac, (sel, ids, tmask) = data
    res, run = {}, lambda fn: measure(fn, args.steps, args.warmup, device, args.batch)
    res["flags"] = run(lambda: (anatomy_token_flags(batch["mask"], m), intact_anatomies(batch["mask"], m)))
    pool = AnatomyQueryPooling(m, args.token_dim, args.embed_dim, POOL_HEADS).to(device)
    toks = [torch.randn(args.batch, d * h * w, args.token_dim, device=device, requires_grad=True)
            for d, h, w in stage_grid_shapes(args.size)]
    flags = anatomy_token_flags(batch["mask"], m)

    def pool_loss():
        with torch.autocast(**ac):
            return pool(toks, flags)["embeds"].float().sum()

    res["pooling"] = run(_train_step(pool_loss, _opt(pool.parameters())))
    del pool, toks
    text, res["text_backbone"] = _text(args, device, m)
    res["text_tokens"] = [int(ids.shape[0]), int(ids.shape[1])]

    def text_loss():
        with torch.autocast(**ac):
            return text(ids, tmask, sel[:, 1]).float().sum()

    res["text"] = run(_train_step(text_loss, _opt(text.parameters())))
    return res, text


def _free(device):
    """Drop the previous entry's modules, optimiser state and caches before the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def guarded(fn, *a, keys):
    """Run one phase's bench (building its modules and measuring); a failure outside ``measure``
    (e.g. out of memory while building the modules) is recorded under ``keys``, not raised."""
    try:
        return fn(*a)
    except Exception as err:  # noqa: BLE001: record any failure, keep the other entries
        rec = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
        return {k: dict(rec) for k in keys}


def _vision(args, device, m):
    fmt = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    net = VisionModel(m, args.depth, args.width, args.token_dim, args.embed_dim, POOL_HEADS).to(device)
    return net.to(memory_format=fmt)


def _text(args, device, m):
    backbone, name = build_text(args.text, args.small)
    return TextEncoder(backbone, args.embed_dim, "query", num_queries=m,
                       temperature=LearnableTemperature()).to(device), name


def _alignment(img, text, texts):
    """Eq. 1 between pooled image embeddings and the intact anatomies' texts (phases 2 and 4)."""
    sel, ids, tmask = texts
    txt = torch.zeros_like(img["embeds"])
    txt = txt.index_put((sel[:, 0], sel[:, 1]), text(ids, tmask, sel[:, 1]).to(txt.dtype))
    return infonce(img["embeds"], txt, img["intact"], text.temperature())


def bench_phase2(args, device, m, data, text):
    """``vision`` (vision model fwd+bwd) and ``phase2`` (vision + text + eq. 1) with one AdamW."""
    batch, image, ac, texts = data
    vision = _vision(args, device, m)
    opt = _opt(list(vision.parameters()) + list(text.parameters()))

    def vision_loss():
        with torch.autocast(**ac):
            return vision(image, batch["mask"])["embeds"].float().sum()

    def phase2_loss():
        with torch.autocast(**ac):
            return _alignment(vision(image, batch["mask"]), text, texts)

    run = lambda fn: measure(fn, args.steps, args.warmup, device, args.batch)  # noqa: E731
    res = {"vision": run(_train_step(vision_loss, opt)), "phase2": run(_train_step(phase2_loss, opt))}
    res["phase2"].update(_param_counts({"vision": vision, "text": text}, {}))
    return res


def build_phase1(args, device, m, data):
    """Phase 1 (tasks/phase1.py): online vision on the image, momentum copy on a second view,
    eq. 2, AdamW, then the EMA update (``task.after_step``). Returns (step, trained, frozen)."""
    batch, image, ac, _ = data
    vision = _vision(args, device, m)
    momentum = MomentumEncoder(vision, MOMENTUM).eval()  # frozen part: eval mode (Task.train)
    opt = _opt(vision.parameters())

    def step():
        with torch.autocast(**ac):
            view_image, view_mask = second_view(image, batch["mask"])
            q = vision(image, batch["mask"])
            k = momentum(view_image, view_mask)  # no autograd inside
            valid = q["intact"] & q["valid"] & k["valid"]
            loss = disease_contrastive_loss(q["embeds"], k["embeds"], valid, batch["abnormal"],
                                            DISEASE_TEMPERATURE, positives=DISEASE_POSITIVES)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        momentum.update(vision)

    return step, {"vision": vision}, {"momentum": momentum}


def build_phase3(args, device, m, data):
    """Phase 3 (tasks/phase3.py, image batches): frozen encoder -> level-4 token sets -> normal
    instances -> VQ-VAE (train mode: EMA codebook update) -> eq. 3; AdamW on the VQ-VAE only.
    Returns (step, trained, frozen)."""
    batch, image, ac, _ = data
    vision = _vision(args, device, m).requires_grad_(False).eval()  # Task.freeze("vision")
    vqvae = NormalityVQVAE(vq_config(args.token_dim, m)).to(device)
    beta = vqvae.cfg.beta

    def loss_fn():
        with torch.autocast(**ac):
            inst = token_instances(vision, image, batch["mask"], batch["abnormal"])
            tokens, token_mask, anatomy = select_normal(inst["tokens"], inst["token_mask"].bool(),
                                                        inst["anatomy"].long(), inst["abnormal"].long())
            out = vqvae(tokens.float(), token_mask, anatomy)
            terms = normality_vq_loss(out, tokens.float(), beta)
            return terms["recon"].float() + (beta * terms["commitment"]).float()  # recon + commit

    return _train_step(loss_fn, _opt(vqvae.parameters())), {"vqvae": vqvae}, {"vision": vision}


def build_phase4(args, device, m, data):
    """Phase 4 (tasks/phase4.py): boosted forward (frozen VQ-VAE, new perception MLP) + text +
    eq. 1; AdamW on vision, text and perception. Returns (step, trained, frozen)."""
    batch, image, ac, texts = data
    vision = _vision(args, device, m)
    text, _ = _text(args, device, m)
    vqvae = NormalityVQVAE(vq_config(args.token_dim, m)).to(device).requires_grad_(False).eval()
    perception = AbnormalityPerception(m, args.token_dim, PERCEPTION_ACTIVATION).to(device)
    opt = _opt([*vision.parameters(), *text.parameters(), *perception.parameters()])

    def loss_fn():
        with torch.autocast(**ac):
            img = boosted_forward(vision, vqvae, perception, image, batch["mask"])
            return _alignment(img, text, texts)

    trained = {"vision": vision, "text": text, "perception": perception}
    return _train_step(loss_fn, opt), trained, {"vqvae": vqvae}


BUILDERS = {"phase1": build_phase1, "phase3": build_phase3, "phase4": build_phase4}


def _param_counts(trained, frozen):
    """Trainable parameter count (millions) and the number of frozen parameters that require
    or hold a gradient (must be 0)."""
    n = sum(p.numel() for mod in trained.values() for p in mod.parameters() if p.requires_grad)
    leak = sum(p.requires_grad or p.grad is not None for mod in frozen.values() for p in mod.parameters())
    return {"trained_params_m": round(n / 1e6, 2), "frozen_params_with_grad": int(leak)}


def bench_phase(name, args, device, m, data):
    """Build phase ``name``'s modules and optimiser, time its training step, free them."""
    step, trained, frozen = BUILDERS[name](args, device, m, data)
    res = measure(step, args.steps, args.warmup, device, args.batch)
    res.update(_param_counts(trained, frozen))
    return {name: res}


def phase3_instances(args, device, m, data):
    """[all intact instances, normal ones (fed to the VQ-VAE), L4] of one phase-3 step."""
    batch, image, ac, _ = data
    vision = _vision(args, device, m).eval()
    with torch.autocast(**ac):
        inst = token_instances(vision, image, batch["mask"], batch["abnormal"])
    normal = int((inst["abnormal"] == 0).sum())
    return [int(inst["tokens"].shape[0]), normal, int(inst["tokens"].shape[1])]


def bench_anatomies(args, device, m):
    """flags / pooling / text / vision and the four phases' training steps at M anatomies."""
    data = make_data(args, device, m)
    batch, image, _, (sel, _, _) = data
    res, text = bench_parts(args, device, m, data)
    res["intact_per_step"] = int(sel.shape[0])
    res["abnormal_frac"] = round(float(batch["abnormal"].float().mean()), 3)
    held = list(batch.values()) + ([image] if image.data_ptr() != batch["image"].data_ptr() else [])
    res["batch_gib"] = float(f"{sum(t.numel() * t.element_size() for t in held) / 2**30:.3g}")
    _free(device)
    res.update(guarded(bench_phase2, args, device, m, data, text, keys=("vision", "phase2")))
    del text
    for name in BUILDERS:
        _free(device)
        res.update(guarded(bench_phase, name, args, device, m, data, keys=(name,)))
        print(f"  M={m} {name}", res[name], flush=True)
    _free(device)
    res.update(guarded(lambda *a: {"phase3_instances": phase3_instances(*a)}, args, device, m, data,
                       keys=("phase3_instances",)))
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
             *(["Smoke run: shows that every entry runs; on a shared CPU its timings are noisy and not "
                "comparable between rows.", ""] if cfg["small"] else []),
             "| part | M | ms/step | samples/s | peak GiB | vs encoder |", "|---|---|---|---|---|---|"]
    base = record["encoder"].get("samples_per_s")

    def row(name, m, r):
        if "error" in r:
            lines.append(f"| {name} | {m} | failed: {r['error']} | | | |")
            return
        ratio = f"{r['samples_per_s'] / base:.2f}" if base and name in ("vision", *PHASES) else ""
        lines.append(f"| {name} | {m} | {r['ms_per_step']} | {r['samples_per_s']} | {r['peak_mem_gib']} | {ratio} |")

    row("encoder (channels_last_3d)" if cfg["channels_last"] else "encoder", "-", record["encoder"])
    if "encoder_contiguous" in record:
        row("encoder (contiguous)", "-", record["encoder_contiguous"])
    for m, res in record["per_m"].items():
        for part in ("flags", "pooling", "text", "vision", *PHASES):
            if part in res:
                row(part, m, res[part])
    lines += ["", "text: " + "; ".join(f"M={m}: {r['text_backbone']}, texts x T = {r['text_tokens']}, "
                                      f"intact pairs {r['intact_per_step']}" for m, r in record["per_m"].items()),
              "", "phase 3 token sets per step (all intact instances, normal ones fed to the VQ-VAE, L4): "
              + "; ".join(f"M={m}: {r.get('phase3_instances')}" for m, r in record["per_m"].items())
              + f"; VQ-VAE: {record.get('vq')}",
              "", "batch held by the bench during every entry (counted in each peak): "
              + "; ".join(f"M={m}: {r.get('batch_gib')} GiB, abnormal fraction {r.get('abnormal_frac')}"
                          for m, r in record["per_m"].items()),
              "", "Each phase row is one full training step of that phase (forward, backward, AdamW, and the "
              "phase-1 EMA update), built fresh with its own optimiser; random weights everywhere.", "",
              "| phase | trains | frozen (no gradient) | trained params (M) per M | frozen params with grad |",
              "|---|---|---|---|---|"]

    def counts(phase, key):
        return " / ".join(f"M={m}: {r.get(phase, {}).get(key, '-')}" for m, r in record["per_m"].items())

    lines += [f"| {k} | {v['trains']} | {v['frozen']} | {counts(k, 'trained_params_m')} | "
              f"{counts(k, 'frozen_params_with_grad')} |" for k, v in record.get("phases", PHASES).items()]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="CPU-sized smoke run (~1-2 min)")
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
    record["phases"] = PHASES
    vq = vq_config(args.token_dim, 1)
    record["vq"] = {k: getattr(vq, k) for k in ("codebook_size", "code_dim", "dim", "depth", "heads", "dim_head",
                                                "mlp_dim", "hidden_dim", "dead_code_threshold")}
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

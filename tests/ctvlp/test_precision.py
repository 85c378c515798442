"""The precision contract (docs/DESIGN.md, "Precision"), on CPU with the GPU path's configuration.

The GPU path is ``TrainConfig(bf16=True)`` as ``train_config_from_spec`` builds it when
``resources.bf16`` is on: the same DeepSpeed config and ``train_step`` a GPU worker runs, so these
tests exercise it on CPU (bf16 speed on CPU says nothing about a GPU; correctness and dtypes do).
"""

from __future__ import annotations

import pytest
import torch

from ctvlp import golden
from ctvlp.loop import TrainConfig, build_engine, ensure_process_group, train_step
from ctvlp.tasks import build_task


@pytest.fixture(scope="module")
def process_group():
    ensure_process_group()  # left in place: DeepSpeed keeps the first group of the process


def _bf16_engine(task, *, lr: float = 1e-3, zero_stage: int = 1, steps: int = 10):
    cfg = TrainConfig(epochs=1, global_batch_size=4, lr=lr, min_lr=0.0, warmup_epochs=0.0, bf16=True,
                      zero_stage=zero_stage)
    return cfg, build_engine(task.module, cfg, steps_per_epoch=steps)


def test_momentum_encoder_moves_as_the_ema_formula_says_in_bf16(process_group):
    """After n EMA updates towards a fixed online encoder theta, the momentum copy has moved by
    (1 - d^n) (theta - theta_0), computed in float32, within 5 %. A gap of 1 % of each weight's
    scale is realistic between an encoder and its EMA; at d = 0.995 one update is 5e-5 of the
    weight, below bf16's resolution (2^-8 = 4e-3), so bf16 momentum weights would never move."""
    torch.manual_seed(0)
    task = build_task(golden.golden_spec(1), 1, init={})
    _bf16_engine(task)
    online, ema = task.module["vision"], task.module["momentum"]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in online.parameters():
            if p.is_floating_point() and p.numel() > 1:
                scale = p.detach().float().std().clamp_min(1e-3)
                p.add_((0.01 * scale * torch.randn(p.shape, generator=gen)).to(p.dtype))
    theta0 = {k: v.detach().float().clone() for k, v in ema.module.named_parameters()}
    theta = {k: v.detach().float().clone() for k, v in online.named_parameters()}
    n, d = 20, ema.decay
    for _ in range(n):
        task.after_step()
    num = den = 0.0
    for k, v in ema.module.named_parameters():
        moved = v.detach().float() - theta0[k]
        expected = (1 - d ** n) * (theta[k] - theta0[k])
        num += float((moved - expected).pow(2).sum())
        den += float(expected.pow(2).sum())
    rel = (num / den) ** 0.5
    assert rel < 0.05, f"momentum displacement off by {rel:.1%} of (1 - d^n)(theta - theta_0)"


# ------------------------------------------------------------------ bf16 tracks float32, per phase
BF16_LOSS_RTOL = 0.02  # measured: <= 0.43 % over 10 steps (phase 3); bf16 keeps 8 bits of mantissa


@pytest.fixture(scope="module")
def fp32_runs(process_group):
    return {p: golden.golden_run(p, steps=10) for p in golden.PHASES}


@pytest.mark.parametrize("phase", golden.PHASES)
def test_bf16_training_tracks_float32(fp32_runs, phase):
    """10 optimiser steps with the GPU path's configuration (DeepSpeed + bf16 autocast) from the
    same seed and batches as the float32 run: every step's loss within 2 %."""
    bf16 = golden.golden_run(phase, steps=10, bf16=True)
    for i, (a, b) in enumerate(zip(fp32_runs[phase].losses, bf16.losses)):
        assert abs(a - b) <= BF16_LOSS_RTOL * abs(a), f"phase {phase} step {i}: float32 {a}, bf16 {b}"
    assert bf16.losses != fp32_runs[phase].losses  # bf16 really ran


def test_bf16_with_zero2_tracks_float32(fp32_runs):
    """ZeRO-2 (gradients partitioned and reduce-scattered) in bf16, phase 4 (every part trains)."""
    run = golden.golden_run(4, steps=10, bf16=True, zero_stage=2)
    assert run.meta["zero_stage"] == 2
    for a, b in zip(fp32_runs[4].losses, run.losses):
        assert abs(a - b) <= BF16_LOSS_RTOL * abs(a)


# --------------------------------------------------------------------------- float32 by contract
def _train_bf16(phase: int, steps: int = 3):
    torch.manual_seed(0)
    spec = golden.golden_spec(phase)
    task = build_task(spec, phase, init={})
    _, engine = _bf16_engine(task, steps=steps)
    task.train()
    for batch in golden.golden_batches(spec, steps, 4):
        train_step(engine, task, batch)
    return task


def test_every_weight_and_buffer_stays_float32_in_bf16(process_group):
    for phase in golden.PHASES:
        task = _train_bf16(phase, steps=1)
        odd = {k: v.dtype for k, v in task.module.state_dict().items()
               if v.is_floating_point() and v.dtype != torch.float32}
        assert not odd, f"phase {phase}: not float32 after a bf16 step: {odd}"


def test_codebook_ema_updates_in_float32_in_bf16(process_group):
    torch.manual_seed(0)
    spec = golden.golden_spec(3)
    task = build_task(spec, 3, init={})
    q = task.module["vqvae"].quantizer
    before = {k: v.clone() for k, v in q.state_dict().items()}
    _, engine = _bf16_engine(task, steps=3)
    task.train()
    for batch in golden.golden_batches(spec, 3, 8):
        train_step(engine, task, batch)
    after = q.state_dict()
    for key in ("codebook", "ema_count", "ema_sum"):
        assert after[key].dtype == torch.float32, key
        assert not torch.equal(after[key], before[key]), f"{key} did not move"
    assert int(after["num_updates"].sum()) > 0


def test_exports_are_float32_whatever_the_training_precision(process_group, tmp_path):
    from safetensors.torch import load_file

    task = _train_bf16(4, steps=1)
    task.module["perception"].to(torch.bfloat16)  # a live bf16 part (as DeepSpeed's bf16 mode left them)
    out = task.export(tmp_path / "p4")
    tensors = load_file(str(out / "model.safetensors"))
    odd = {k: v.dtype for k, v in tensors.items() if v.is_floating_point() and v.dtype != torch.float32}
    assert not odd and any(k.startswith("perception.") for k in tensors), odd


def test_temperature_is_clamped_after_each_step(process_group):
    torch.manual_seed(0)
    spec = golden.golden_spec(2, ["model.temperature_max=0.08"])
    task = build_task(spec, 2, init={})
    tau = task.module["text"].temperature.tau
    with torch.no_grad():
        tau.fill_(0.3)  # as if an optimiser step had pushed it past temperature_max
    task.after_step()
    assert float(tau.detach()) == pytest.approx(0.08)


def test_gloo_reduces_gradients_in_float32(tmp_path):
    """The DeepSpeed config never lowers the gradient communication dtype, so gloo (CPU) and NCCL
    reduce float32 gradients; an all-reduce of float32 values that bf16 cannot hold stays exact."""
    from tests.ctvlp.gloo import run_ranks

    run_ranks(_all_reduce_exact, tmp_path)


def _all_reduce_exact(rank: int, world: int) -> None:
    import torch.distributed as dist

    from ctvlp.loop import deepspeed_config

    cfg = TrainConfig(epochs=1, global_batch_size=4, lr=1e-3, bf16=True)
    ds = deepspeed_config(cfg, world)
    assert ds["communication_data_type"] == "fp32" and ds["torch_autocast"]["lower_precision_safe_modules"] == []
    x = torch.full((4,), 1.0 + 2.0 ** -12) * (rank + 1)  # 1 + 2^-12 rounds to 1.0 in bf16
    dist.all_reduce(x)
    assert torch.equal(x, torch.full((4,), (1.0 + 2.0 ** -12) * sum(range(1, world + 1))))


# ------------------------------------------------------------------------------------ evaluation
def _eval_samples(spec, n: int, seed: int = 5) -> list[dict]:
    import numpy as np

    from ctvlp.models.text import build_tokenizer

    rng = np.random.default_rng(seed)
    tok = build_tokenizer(spec.model.text.name_or_path)
    out = []
    for i in range(n):
        s = golden.phantom_sample(i, spec.data.num_anatomies, tok, spec.model.text.max_length, rng)
        m = spec.data.num_anatomies
        boxes, counts = [], []
        for j in range(m):
            zz, yy, xx = np.nonzero(s["mask"] == j + 1)
            boxes.append([zz.min(), zz.max() + 1, yy.min(), yy.max() + 1, xx.min(), xx.max() + 1])
            counts.append(len(zz))
        s.update(boxes=np.asarray(boxes, np.int32), voxel_counts=np.asarray(counts), disease_labels={})
        out.append(s)
    return out


def test_evaluation_in_bf16_gives_the_float32_aucs(process_group, tmp_path):
    """One phase-4 export (boosted path: vision, VQ-VAE, perception, text) embedded and scored in
    bf16 and in float32: embeddings agree to cosine > 0.99 and every anatomy's AUC of the
    "abnormal" score within 0.03."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from ctvlp.config import DiseaseSpec
    from ctvlp.eval.embed import EvalModel, embed_studies
    from ctvlp.eval.zeroshot import PromptBank

    task = _train_bf16(4, steps=3)
    export = task.export(tmp_path / "p4")
    spec = golden.golden_spec(4)
    samples = _eval_samples(spec, 24)
    diseases = [DiseaseSpec(name=f"finding {a}", anatomy=a,
                            prompts=[("no significant abnormalities.", f"{golden.FINDINGS[j]} in region 1.")])
                for j, a in enumerate(spec.data.anatomies)]
    scores, embeds = {}, {}
    for bf16 in (False, True):
        model = EvalModel.from_export(export, bf16=bf16)
        emb = embed_studies(model, samples, spec.data.eval_window, batch_size=8, activation_samples=8)
        scores[bf16], embeds[bf16] = PromptBank(model, diseases).score(emb), emb.embeds
    cos = (embeds[True] * embeds[False]).sum(-1)
    assert np.nanmin(cos) > 0.99, np.nanmin(cos)
    labels = np.stack([s["abnormal"] for s in samples])  # [S, M]
    for j in range(labels.shape[1]):
        a32, a16 = (roc_auc_score(labels[:, j], scores[b][:, j]) for b in (False, True))
        assert abs(a32 - a16) <= 0.03, (j, a32, a16)


# ------------------------------------------------------------------------------ BatchNorm across ranks
def test_batchnorm_statistics_are_averaged_over_ranks(tmp_path):
    from tests.ctvlp.gloo import run_ranks

    run_ranks(_bn_average, tmp_path)


def _bn_average(rank: int, world: int) -> None:
    from torch import nn

    from ctvlp.loop import average_batchnorm_stats

    net = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2), nn.ReLU(), nn.BatchNorm3d(2))
    with torch.no_grad():
        for i, m in enumerate(m for m in net if isinstance(m, nn.BatchNorm3d)):
            m.running_mean.fill_(rank + i)
            m.running_var.fill_(1.0 + 2 * rank)
    assert average_batchnorm_stats(net) == 2
    bn = [m for m in net if isinstance(m, nn.BatchNorm3d)]
    assert torch.equal(bn[0].running_mean, torch.full((2,), 0.5)) and torch.equal(bn[1].running_mean, torch.full((2,), 1.5))
    assert torch.equal(bn[0].running_var, torch.full((2,), 2.0))


def test_sync_batchnorm_is_refused_on_cpu():
    from torch import nn

    from ctvlp.loop import convert_sync_batchnorm

    with pytest.raises(ValueError, match="resources.sync_batchnorm needs CUDA"):
        convert_sync_batchnorm(nn.ModuleDict({"v": nn.Sequential(nn.BatchNorm3d(2))}))


@pytest.mark.parametrize("phase, overrides", [(2, ["model.alignment=global"]), (1, ["model.visual_contrast=instance"])],
                         ids=["clip", "vsei"])
def test_comparison_methods_in_bf16_track_float32(process_group, phase, overrides):
    """CLIP (phase 2, global alignment) and VSEI (phase 1, instance contrast) with the GPU path's
    configuration: the encoder and pooling in bf16 under autocast, the loss in float32 (both
    losses are @float32_compute), every step's loss within 2 % of float32, weights float32."""
    fp32 = golden.golden_run(phase, overrides, steps=6)
    bf16 = golden.golden_run(phase, overrides, steps=6, bf16=True)
    for i, (a, b) in enumerate(zip(fp32.losses, bf16.losses)):
        assert abs(a - b) <= BF16_LOSS_RTOL * abs(a), f"step {i}: float32 {a}, bf16 {b}"
    assert bf16.losses != fp32.losses

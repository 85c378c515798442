"""Each phase's debug task: runs on a synthetic batch, lowers its loss within 50 CPU steps,
keeps frozen parts frozen, and starts from the previous phase's export."""

from __future__ import annotations

import pytest
import torch

from ctvlp.config import load_spec
from ctvlp.models.text import build_tokenizer, pad_batch, tokenize_texts
from ctvlp.tasks import build_task, total_loss

M = 4  # chest grouping: lung, heart, esophagus, aorta


@pytest.fixture(scope="module")
def spec():
    return load_spec("jobs/specs/debug.yaml", ["data.grouping=chest", "model.pool_dropout=0.0",
                                               "model.vq.dropout=0.0",
                                               "model.momentum=0.9",
                                               "model.temperature_learnable=false"])


def phantom_batch(b: int = 4, size=(32, 32, 32), seed: int = 0, tokenizer=None) -> dict:
    """Blobs of anatomies 1..M inside the crop; an abnormal anatomy gets a bright spot."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = size
    image = 0.3 + 0.02 * torch.randn(b, 1, d, h, w, generator=g)
    mask = torch.zeros(b, d, h, w, dtype=torch.long)
    abnormal = (torch.rand(b, M, generator=g) < 0.5).long()
    boxes = [(4, 14, 4, 14), (4, 14, 18, 28), (18, 28, 4, 14), (18, 28, 18, 28)]
    texts = []
    for i in range(b):
        for j, (h0, h1, w0, w1) in enumerate(boxes):
            mask[i, 6:26, h0:h1, w0:w1] = j + 1
            # per-sample organ intensity: instances differ, as real scans do
            image[i, 0, 6:26, h0:h1, w0:w1] = 0.45 + 0.1 * j + 0.3 * float(torch.rand(1, generator=g))
            if abnormal[i, j]:  # a lesion at a random place: abnormal instances differ
                z, y, x = (int(v) for v in torch.randint(0, 5, (3,), generator=g))
                image[i, 0, 8 + 2 * z:14 + 2 * z, h0 + y:h0 + y + 5, w0 + x:w0 + x + 5] = 0.95
            texts.append("no significant abnormalities." if not abnormal[i, j]
                         else f"a dense nodule is seen in segment {i}.")
    batch = {"image": image.clamp(0, 1), "mask": mask, "abnormal": abnormal}
    if tokenizer is not None:
        ids, am = pad_batch(tokenize_texts(tokenizer, texts, 32), tokenizer.pad_token_id or 0)
        batch["text_ids"] = ids.view(b, M, -1)
        batch["text_mask"] = am.view(b, M, -1)
    return batch


def _train(task, batch_fn, steps: int, lr: float = 3e-3) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(task.trainable_parameters(), lr=lr)
    task.train()
    curve = []
    for s in range(steps):
        torch.manual_seed(1234)  # the same random views every step: a fixed objective to lower
        losses, _ = task.training_step(batch_fn(s))
        loss = total_loss(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        task.after_step()
        curve.append(float(loss.detach()))
    return curve


@pytest.mark.parametrize("phase", [1, 2, 4])
def test_image_phases_lower_their_loss(spec, phase, tmp_path):
    torch.manual_seed(0)  # model init
    tok = build_tokenizer("tiny")
    init = None
    if phase == 4:  # phase 4 needs a phase-2 aligned model and a phase-3 VQ-VAE
        init = {"aligned_model": build_task(spec, 2, init={}).export(tmp_path / "p2"),
                "vqvae": build_task(spec, 3, init={}).export(tmp_path / "p3")}
    task = build_task(spec, phase, init=init or {})
    batch = phantom_batch(seed=0, tokenizer=tok)
    curve = _train(task, lambda s: batch, steps=40, lr=1e-3)
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < 0.85 * first, curve


def test_phase3_lowers_loss_and_keeps_encoder_frozen(spec):
    task = build_task(spec, 3, init={})
    before = {k: v.clone() for k, v in task.module["vision"].state_dict().items()}
    batch = phantom_batch(seed=0)
    curve = _train(task, lambda s: batch, steps=40)
    assert curve[-1] < 0.7 * curve[0], curve
    for k, v in task.module["vision"].state_dict().items():
        assert torch.equal(v, before[k]), f"frozen encoder changed: {k}"
    assert all(p.grad is None for p in task.module["vision"].parameters())


def test_phase4_vqvae_frozen_and_starts_from_exports(spec, tmp_path):
    p2 = build_task(spec, 2, init={})
    p3 = build_task(spec, 3, init={})
    init = {"aligned_model": p2.export(tmp_path / "p2"), "vqvae": p3.export(tmp_path / "p3")}
    task = build_task(spec, 4, init=init)
    for part in ("vision", "text", "vqvae"):
        src = (p2 if part != "vqvae" else p3).module[part].state_dict()
        for k, v in task.module[part].state_dict().items():
            assert torch.equal(v, src[k]), f"{part}.{k} not loaded from the export"
    codebook = task.module["vqvae"].quantizer.codebook.clone()
    _train(task, lambda s: phantom_batch(seed=s, tokenizer=build_tokenizer("tiny")), steps=2)
    assert torch.equal(task.module["vqvae"].quantizer.codebook, codebook)
    assert all(not p.requires_grad for p in task.module["vqvae"].parameters())


def test_unresolved_reference_and_wrong_part_fail(spec, tmp_path):
    with pytest.raises(ValueError, match="unresolved phase reference"):
        build_task(spec, 2)  # defaults: phase2.init.vision_encoder = "phase1"
    vq_only = build_task(spec, 3, init={}).export(tmp_path / "vq")
    with pytest.raises(ValueError, match="has no part 'vision'"):
        build_task(spec, 2, init={"vision_encoder": vq_only})


def test_phase1_momentum_follows_online(spec):
    task = build_task(spec, 1, init={})
    online = task.module["vision"]
    mom = task.module["momentum"].module
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    task.after_step()
    d = spec.model.momentum
    for (name, p), q in zip(online.named_parameters(), mom.parameters()):
        # q = d * q0 + (1 - d) * (q0 + 1) = q0 + (1 - d), with q0 = p - 1
        assert torch.allclose(q, p - 1 + (1 - d), atol=1e-6), name


def test_text_dedupe_matches_encoding_every_row(spec):
    from ctvlp.models.text import build_text_encoder
    from ctvlp.tasks.phase2 import encode_anatomy_texts

    torch.manual_seed(0)
    text = build_text_encoder(spec.model, M).eval()
    batch = phantom_batch(b=6, seed=3, tokenizer=build_tokenizer("tiny"))
    ids, am = batch["text_ids"], batch["text_mask"]
    select = torch.ones(6, M, dtype=torch.bool)
    select[0, 1] = False
    got = encode_anatomy_texts(text, ids, am, select)
    for i in range(6):
        for j in range(M):
            want = text(ids[i, j][None], am[i, j][None], torch.tensor([j]))[0] if select[i, j] else torch.zeros(got.shape[-1])
            assert torch.allclose(got[i, j], want, atol=1e-5), (i, j)


def test_an_export_of_another_model_spec_is_refused_not_partly_loaded(spec, tmp_path):
    """Fine-tuning from an export is strict: a model section that differs from the export's
    (here the token width) stops the load naming the part and the keys, instead of training on
    a half-loaded model (docs/finetune.md)."""
    export = build_task(spec, 2, init={}).export(tmp_path / "p2")
    other = spec.model_copy(deep=True)
    other.model.token_dim = spec.model.token_dim * 2
    with pytest.raises(ValueError, match=r"part 'vision' of export .* does not fit 'vision'.*shape mismatch"):
        build_task(other, 2, init={"aligned_model": export})

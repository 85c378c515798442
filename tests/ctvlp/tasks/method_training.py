"""What the method tasks' learning tests share: 50 steps on the fixed findings batch (or on its
report-shuffled copies), then the zero-shot macro AUC of the shared evaluation on that batch."""

from __future__ import annotations

import tempfile

import torch

from ctvlp.config import DiseaseSpec, load_spec
from ctvlp.eval.embed import EvalModel
from ctvlp.eval.zeroshot import macro_auc, zero_shot
from ctvlp.models.text import build_tokenizer
from ctvlp.tasks import build_task, total_loss
from tests.ctvlp.tasks import findings_batch as fb

STEPS = 50
BATCH = 24
LR = 1e-3


def method_spec(method: str, *overrides: str):
    """The debug spec on the chest grouping with ``method`` training phase 2 from scratch; dropout
    off (as the phases' task tests set ``model.pool_dropout=0``)."""
    return load_spec("jobs/specs/debug.yaml", [
        "data.grouping=chest", f"methods.phase2_task={method}", "phases.phase2.init.vision_encoder=null",
        "model.pool_dropout=0.0", f"methods.{method}.decoder.dropout=0.0", *overrides])


def diseases(labelled: int = 2) -> list[DiseaseSpec]:
    """The tabulated findings as the evaluation scores them, with the catalogue's prompt pairs."""
    return [DiseaseSpec(name=f, anatomy=a, prompts=[(f"Not {f.lower()}.", f"{f}.")])
            for f, a in zip(fb.FINDINGS[:labelled], fb.ANATOMIES)]


def train_and_score(spec, shuffle: bool, seed: int = 0) -> tuple[float, list]:
    """Train ``STEPS`` AdamW steps on the fixed batch (``shuffle``: each step's reports dealt at
    random), then export and score that batch through the shared evaluation (EvalModel ->
    embed_studies -> prompt or existence scores). Returns (macro AUC, the task)."""
    studies = fb.samples(BATCH, 0, build_tokenizer(spec.model.text.name_or_path))
    batch = fb.training_batch(studies)
    torch.manual_seed(seed)
    task = build_task(spec, 2)
    opt = torch.optim.AdamW(task.trainable_parameters(), lr=LR)
    draws = torch.Generator().manual_seed(1)
    task.train()
    for _ in range(STEPS):
        losses, _ = task.training_step(fb.shuffled_reports(batch, draws) if shuffle else batch)
        opt.zero_grad()
        total_loss(losses).backward()
        opt.step()
        task.after_step()
    fb.recalibrate_batchnorm(task, batch)
    with tempfile.TemporaryDirectory() as tmp:
        task.export(tmp)
        model = EvalModel.from_export(tmp)
        result = zero_shot(model, studies, diseases(), spec.data.eval_window)
    return macro_auc(result.scores, result.labels), task

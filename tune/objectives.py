"""Validation objectives of a sweep, computed inside the trial's Train workers.

- phase 3: how well the normality model's reconstruction error separates normal from abnormal
  anatomies on the validation split (``val_normality_auc``: ROC AUC of
  :meth:`NormalityVQVAE.anomaly_score`, abnormal = positive; the paper's premise), with
  ``val_recon_loss`` (mean reconstruction error of the *normal* validation anatomies) beside it;
- phases 2 and 4: validation zero-shot macro AUC (``val_zero_shot_auc``: mean over diseases with
  both classes present of the ROC AUC of :mod:`ctvlp.eval.zeroshot` scores).

Where: :class:`ObjectiveTask` wraps the phase's task (the runner's ``task_factory`` hook), so
the objective runs on the trial's own workers and devices (a GPU trial scores on its GPU), and
travels in the metrics of the runner's checkpoint reports to Tune through
``TuneReportCallback``. World rank 0 evaluates; the callback forwards rank 0's metrics. The
wrapper evaluates at exactly the steps at which the runner reports (every
``checkpoint_every_steps`` and at epoch ends), *before* that step's update: the objective
reported at step s scores the weights after s - 1 updates. (The runner has no validation hook
yet; ``training_step`` is the only place a task can add metrics to a report.)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from ctvlp.tasks import build_task

NORMALITY_AUC, RECON_LOSS, ZERO_SHOT_AUC = "val_normality_auc", "val_recon_loss", "val_zero_shot_auc"
OBJECTIVE_FACTORY = "tune.objectives:build_objective_task"


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` [N]; NaN unless both classes are present."""
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=float).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ")
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))


@torch.no_grad()
def normality_metrics(vqvae, batch: dict[str, torch.Tensor], chunk: int = 256) -> dict[str, float]:
    """``val_normality_auc`` and ``val_recon_loss`` of a VQ-VAE on validation instances.

    Args:
        vqvae: :class:`ctvlp.models.vqvae.NormalityVQVAE` (its train/eval mode is restored after).
        batch: ``tokens`` [N, L, C], ``token_mask`` [N, L] bool, ``anatomy`` [N], ``abnormal`` [N] (0/1).
        chunk: instances per forward pass.
    """
    n = batch["tokens"].shape[0]
    if n == 0:
        raise ValueError("no validation instances to score")
    was_training = vqvae.training
    vqvae.eval()  # no dropout; anomaly_score never updates the codebook
    try:
        device = next(vqvae.parameters()).device
        dtype = next(vqvae.parameters()).dtype
        scores = torch.cat([
            vqvae.anomaly_score(batch["tokens"][i:i + chunk].to(device, dtype),
                                batch["token_mask"][i:i + chunk].to(device),
                                batch["anatomy"][i:i + chunk].to(device)).float().cpu()
            for i in range(0, n, chunk)
        ]).numpy()
    finally:
        vqvae.train(was_training)
    abnormal = batch["abnormal"].cpu().numpy()
    normal = scores[abnormal == 0]
    return {NORMALITY_AUC: roc_auc(abnormal, scores),
            RECON_LOSS: float(normal.mean()) if normal.size else math.nan}


def zero_shot_macro_auc(spec: Any, parts: dict[str, torch.nn.Module], phase: int, samples: list[dict]) -> dict:
    """``val_zero_shot_auc`` of live model parts on decoded validation samples.

    The parts are deep-copied (evaluation puts them in eval mode without gradients; the
    training copies must stay as they are). Also returns ``val_zero_shot_diseases``, the number of
    diseases that entered the mean.
    """
    from ctvlp.eval.embed import EvalModel
    from ctvlp.eval.zeroshot import zero_shot

    device = str(next(parts["vision"].parameters()).device)
    model = EvalModel(spec, {k: copy.deepcopy(m).float() for k, m in parts.items()}, phase, device)
    res = zero_shot(model, samples, spec.eval.disease_list(spec.data), spec.data.eval_window,
                    batch_size=spec.eval.batch_size, activation_samples=1)
    aucs = []
    for k in range(len(res.diseases)):
        ok = np.isfinite(res.scores[:, k]) & np.isfinite(res.labels[:, k])
        value = roc_auc(res.labels[ok, k], res.scores[ok, k])
        if not math.isnan(value):
            aucs.append(value)
    return {ZERO_SHOT_AUC: float(np.mean(aucs)) if aucs else math.nan, "val_zero_shot_diseases": float(len(aucs))}


# ------------------------------------------------------------------------------- evaluators
class NormalityEvaluator:
    """Phase 3: scores the task's VQ-VAE on the cached validation tokens at ``val_uri`` (loaded once)."""

    def __init__(self, val_uri: str, storage) -> None:
        self.val_uri, self.storage, self._batch = val_uri, storage, None

    def __call__(self, task) -> dict[str, float]:
        from jobs.tokens import instance_batch, read_token_table

        if self._batch is None:
            table = read_token_table(self.val_uri, self.storage)
            self._batch = instance_batch(table.to_pydict(), task.spec.model.token_dim)
        return normality_metrics(task.module["vqvae"], self._batch)


class ZeroShotEvaluator:
    """Phases 2/4: zero-shot macro AUC on the committed shards of ``split`` (decoded once)."""

    def __init__(self, split: str = "valid") -> None:
        self.split, self._samples = split, None

    def __call__(self, task) -> dict[str, float]:
        if self._samples is None:
            self._samples = load_split_samples(task.spec, self.split)
        parts = {name: task.module[name] for name in task.export_parts}
        return zero_shot_macro_auc(task.spec, parts, task.phase, self._samples)


def load_split_samples(spec: Any, split: str) -> list[dict]:
    """Decoded samples of a split's committed shards (read directly: one worker, a small split)."""
    import pyarrow.parquet as pq

    from ctvlp.data import decode_sample
    from jobs.data import storage_of, train_shard_uris
    from jobs.evaluate import READ_COLUMNS

    storage, samples = storage_of(spec), []
    for uri in train_shard_uris(spec, split):
        fs, path = storage.fs(uri)
        with fs.open(path, "rb") as f:
            samples += [decode_sample(row) for row in pq.read_table(f, columns=READ_COLUMNS).to_pylist()]
    if not samples:
        raise ValueError(f"split {split!r} has no rows to validate on")
    return samples


# ------------------------------------------------------------------------------ the wrapper
class ObjectiveTask:
    """A phase task that also reports the sweep's validation objective.

    Delegates everything to ``inner`` (``module``, ``required_keys``, ``after_step``, ``export``,
    ``train``); ``training_step`` adds the evaluator's metrics on rank 0 at the report steps.

    Args:
        inner: the phase's task. evaluator: ``task -> {metric: float}``.
        every: ``checkpoint_every_steps`` (0 = epoch ends only); steps_per_epoch: as the runner plans.
    """

    def __init__(self, inner, evaluator, every: int, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1 or every < 0:
            raise ValueError(f"need steps_per_epoch >= 1 and every >= 0, got {steps_per_epoch}, {every}")
        self.inner, self.evaluator = inner, evaluator
        self.every, self.steps_per_epoch, self.calls = every, steps_per_epoch, 0

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (e.g. while unpickling): no delegation loop
            raise AttributeError(name)
        return getattr(self.inner, name)  # only reached for attributes this wrapper does not have

    def reports_at(self, step: int) -> bool:
        """The runner's rule: a report every ``every`` steps and at every epoch end."""
        return step % self.steps_per_epoch == 0 or bool(self.every and step % self.every == 0)

    def training_step(self, batch):
        self.calls += 1
        extra = {}
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0 and self.reports_at(self.calls):
            extra = self.evaluator(self.inner)
        losses, metrics = self.inner.training_step(batch)
        return losses, {**metrics, **extra}


def build_objective_task(spec, phase: int, init: dict | None = None, *, objective: dict) -> ObjectiveTask:
    """Runner ``task_factory``: the phase's task wrapped with its evaluator.

    ``objective``: ``{"kind": "normality"|"zero_shot", "every": int, "steps_per_epoch": int}`` plus
    ``val_uri`` and ``storage`` for "normality", ``split`` for "zero_shot".
    """
    inner = build_task(spec, phase, init)
    kind = objective["kind"]
    if kind == "normality":
        evaluator = NormalityEvaluator(objective["val_uri"], objective["storage"])
    elif kind == "zero_shot":
        evaluator = ZeroShotEvaluator(objective.get("split", "valid"))
    else:
        raise ValueError(f"objective kind must be 'normality' or 'zero_shot', got {kind!r}")
    return ObjectiveTask(inner, evaluator, objective["every"], objective["steps_per_epoch"])

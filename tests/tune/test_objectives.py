"""tune.objectives: AUC helpers, the VQ-VAE normality objective, zero-shot AUC, the task wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctvlp.config import load_spec
from ctvlp.models.vqvae import build_vqvae
from tune import objectives as obj


@pytest.fixture(scope="module")
def spec():
    return load_spec("jobs/specs/tune_debug.yaml")


def instances(n=24, seed=0, token_dim=32, m=4):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[::3, 3:] = False  # ragged sets
    return {"tokens": torch.randn(n, 5, token_dim, generator=g), "token_mask": mask,
            "anatomy": torch.arange(n) % m, "abnormal": (torch.arange(n) % 4 == 0).long()}


def test_roc_auc_matches_hand_values_and_nan_for_one_class():
    assert obj.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert obj.roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.75
    assert math.isnan(obj.roc_auc(np.zeros(4), np.arange(4.0)))


def test_normality_metrics_equal_a_direct_computation(spec):
    torch.manual_seed(0)
    vq = build_vqvae(spec.model, 4).train()
    batch = instances()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    got = obj.normality_metrics(vq, batch, chunk=5)  # chunking must not change anything
    assert vq.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())  # no codebook update
    vq.eval()
    scores = vq.anomaly_score(batch["tokens"], batch["token_mask"], batch["anatomy"]).numpy()
    from sklearn.metrics import roc_auc_score

    ab = batch["abnormal"].numpy()
    assert got["val_normality_auc"] == pytest.approx(roc_auc_score(ab, scores))
    assert got["val_recon_loss"] == pytest.approx(scores[ab == 0].mean(), rel=1e-5)


def test_normality_auc_is_one_when_abnormal_instances_reconstruct_worse(spec, monkeypatch):
    vq = build_vqvae(spec.model, 4)
    batch = instances()
    batch["tokens"][batch["abnormal"].bool()] += 100.0
    monkeypatch.setattr(vq, "anomaly_score", lambda t, m, a: t.abs().amax(dim=(1, 2)))  # a stand-in error
    assert obj.normality_metrics(vq, batch)["val_normality_auc"] == 1.0
    monkeypatch.setattr(vq, "anomaly_score", lambda t, m, a: torch.zeros(t.shape[0]))
    assert obj.normality_metrics(vq, batch)["val_normality_auc"] == 0.5  # constant scores: chance


class FakeTask:
    phase, required_keys, export_parts = 3, ("tokens",), ("vqvae",)

    def __init__(self):
        self.module, self.steps = torch.nn.ModuleDict({"vqvae": torch.nn.Linear(2, 2)}), 0

    def training_step(self, batch):
        self.steps += 1
        return {"recon_loss": torch.tensor(1.0)}, {"perplexity": 2.0}

    def export(self, out):
        return f"exported to {out}"


@pytest.mark.parametrize("every, per_epoch, expected", [
    (2, 6, [2, 4, 6, 8, 10, 12]), (4, 6, [4, 6, 8, 12]), (0, 5, [5, 10])])
def test_wrapper_evaluates_exactly_at_the_runners_report_steps(every, per_epoch, expected):
    calls = []
    task = obj.ObjectiveTask(FakeTask(), lambda t: calls.append(t.steps) or {"val_x": float(t.steps)}, every, per_epoch)
    seen = []
    for step in range(1, 13):
        losses, metrics = task.training_step({})
        assert metrics["perplexity"] == 2.0 and set(losses) == {"recon_loss"}
        if "val_x" in metrics:
            seen.append(step)
            assert metrics["val_x"] == step - 1  # scored before this step's update
    assert seen == expected and calls == [s - 1 for s in expected]
    assert task.required_keys == ("tokens",) and task.export("d") == "exported to d" and task.phase == 3
    assert isinstance(task.module["vqvae"], torch.nn.Linear)


def test_zero_shot_macro_auc_leaves_the_training_parts_alone(spec):
    from ctvlp.tasks import build_task
    from tests.jobs.test_evaluate import shard_row
    from ctvlp.data import decode_sample

    torch.manual_seed(0)
    task = build_task(spec, 2, init={})
    task.train()
    samples = [decode_sample(shard_row(f"v{i}", "valid", i, spec.data.num_anatomies)) for i in range(6)]
    out = obj.zero_shot_macro_auc(spec, {k: task.module[k] for k in task.export_parts}, 2, samples)
    assert 0.0 <= out["val_zero_shot_auc"] <= 1.0 and out["val_zero_shot_diseases"] >= 1
    assert task.module["vision"].training and all(p.requires_grad for p in task.module["vision"].parameters())

"""bench/model_step.py: its copies of task code and spec defaults match the real ones, and each
phase's step trains only what the task trains (tiny CPU sizes, one step each)."""

from __future__ import annotations

import copy

import pytest
import torch

from bench import model_step as ms


@pytest.fixture(scope="module")
def tiny():
    args = ms.parse_args(["--small", "--text", "standin", "--anatomies", "4"])
    torch.manual_seed(0)
    return args, ms.make_data(args, torch.device("cpu"), 4)


def test_synthetic_batch_has_abnormal_labels():
    batch = ms.synthetic_batch(3, (16, 32, 32), 5, torch.device("cpu"))
    assert batch["abnormal"].shape == (3, 5) and batch["abnormal"].dtype == torch.int64
    assert set(batch["abnormal"].unique().tolist()) <= {0, 1}


def test_constants_match_default_spec():
    from ctvlp.config import load_spec
    from ctvlp.models.vqvae import build_vqvae

    model = load_spec().model
    assert (ms.MOMENTUM, ms.DISEASE_TEMPERATURE, ms.DISEASE_POSITIVES, ms.PERCEPTION_ACTIVATION,
            ms.POOL_HEADS) == (model.momentum, model.disease_temperature, model.disease_positives,
                               model.perception_activation, model.pool_heads)
    assert ms.vq_config(model.token_dim, 7) == build_vqvae(model, 7).cfg


def test_second_view_and_token_instances_match_tasks(tiny):
    from ctvlp.tasks.phase1 import second_view
    from ctvlp.tasks.phase3 import token_instances

    args, (batch, image, _, _) = tiny
    torch.manual_seed(3)
    ref = second_view(image, batch["mask"])
    torch.manual_seed(3)
    got = ms.second_view(image, batch["mask"])
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    vision = ms._vision(args, torch.device("cpu"), 4).eval()
    ref = token_instances(vision, image, batch["mask"], batch["abnormal"])
    got = ms.token_instances(vision, image, batch["mask"], batch["abnormal"])
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize("phase", ["phase1", "phase3", "phase4"])
def test_phase_step_trains_only_the_task_parts(tiny, phase):
    args, data = tiny
    step, trained, frozen = ms.BUILDERS[phase](args, torch.device("cpu"), 4, data)
    before = {k: copy.deepcopy(m.state_dict()) for k, m in {**trained, **frozen}.items()}
    step()
    for name, mod in frozen.items():
        assert all(not p.requires_grad and p.grad is None for p in mod.parameters()), name
        changed = any(not torch.equal(v, mod.state_dict()[k]) for k, v in before[name].items())
        assert changed == (phase == "phase1"), name  # only the momentum copy moves (EMA), no grad
    for name, mod in trained.items():
        assert any(not torch.equal(v, mod.state_dict()[k]) for k, v in before[name].items()), name
    assert ms._param_counts(trained, frozen)["frozen_params_with_grad"] == 0


def test_markdown_lists_every_phase():
    ok = {"ms_per_step": 1.0, "samples_per_s": 2.0, "peak_mem_gib": None}
    per_m = {p: dict(ok) for p in ("flags", "pooling", "text", "vision", *ms.PHASES)}
    per_m.update(text_backbone="x", text_tokens=[1, 2], intact_per_step=1, phase3_instances=[1, 1, 1])
    per_m["phase3"] = {"error": "OutOfMemoryError: boom"}
    record = {"config": {"small": True, "batch": 2, "size": [16, 32, 32], "depth": "debug", "width": 8,
                         "bf16": False, "channels_last": False},
              "versions": {}, "encoder": dict(ok), "per_m": {"4": per_m}, "phases": ms.PHASES}
    md = ms.to_markdown(record)
    for p in ("phase1", "phase2", "phase4"):
        assert f"| {p} | 4 | 1.0 | 2.0 |" in md
    assert "| phase3 | 4 | failed: OutOfMemoryError: boom |" in md
    assert "| phase3 | VQ-VAE" in md

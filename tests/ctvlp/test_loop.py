"""ctvlp.loop: schedule by formula, DeepSpeed engine in one process, exact checkpoint round trip."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from ctvlp.loop import (
    TrainConfig, TrainState, WarmupCosine, build_engine, deepspeed_config, export_safetensors,
    load_checkpoint, load_safetensors, lr_at, save_checkpoint, state_digest, train_config_from_spec,
    train_step,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.jobs.toy_task import ToyTask, toy_rows  # noqa: E402


# ------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1e-6 + (1e-4 - 1e-6) * 1 / 4),  # first warm-up step
        (3, 1e-4),  # last warm-up step reaches the peak
        (4, 1e-4),  # cosine starts at the peak
        (7, 1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * 3 / 6))),
        (10, 1e-6),  # last step: min_lr
        (50, 1e-6),  # beyond: stays at min_lr
    ],
)
def test_lr_at_matches_formula(step, expected):
    assert lr_at(step, peak=1e-4, min_lr=1e-6, warmup_steps=4, total_steps=11) == pytest.approx(expected)


def test_lr_without_warmup_and_bad_input():
    assert lr_at(0, peak=1.0, min_lr=0.0, warmup_steps=0, total_steps=3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="step >= 0"):
        lr_at(-1, peak=1.0, min_lr=0.0, warmup_steps=0, total_steps=3)


def test_warmup_cosine_is_one_epoch_of_warmup():
    f = WarmupCosine(TrainConfig(epochs=3, global_batch_size=4, lr=2e-4, min_lr=1e-6), steps_per_epoch=5)
    assert f.warmup_steps == 5 and f.total_steps == 15
    assert f(4) == pytest.approx(1.0)
    assert f(14) == pytest.approx(1e-6 / 2e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"zero_stage": 3}, "zero_stage"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"checkpoint_every_epochs": 0}, "checkpoint_every_epochs"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{"epochs": 1, "global_batch_size": 4, "lr": 1e-3, **kwargs})


def test_deepspeed_config_splits_the_global_batch():
    cfg = TrainConfig(epochs=1, global_batch_size=12, lr=1e-3, zero_stage=2, grad_clip=0.5, bf16=True)
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["train_batch_size"] == 12
    assert ds["zero_optimization"] == {"stage": 2}
    # bf16 = autocast on float32 weights, float32 gradient communication (ctvlp.precision)
    assert ds["bf16"] == {"enabled": False} and ds["torch_autocast"]["enabled"] is True
    assert ds["torch_autocast"]["lower_precision_safe_modules"] == [] and ds["communication_data_type"] == "fp32"
    assert ds["gradient_clipping"] == 0.5 and ds["zero_allow_untested_optimizer"] is True
    with pytest.raises(ValueError, match="multiple of resources.num_workers"):
        deepspeed_config(cfg, world_size=5)


@pytest.mark.parametrize("micro, steps, world, expected", [
    (0, 0, 4, (3, 1)),  # neither given: one micro-batch of global / workers
    (1, 0, 4, (1, 3)),  # micro given: accumulation derived
    (0, 3, 2, (2, 3)),  # accumulation given: micro derived
    (3, 2, 2, (3, 2)),  # both, consistent
    (2, 0, 3, (2, 2)),  # resumed on 3 workers instead of 2 (micro 2): still 12 per step
])
def test_batch_split_keeps_the_global_batch(micro, steps, world, expected):
    cfg = TrainConfig(epochs=1, global_batch_size=12, lr=1e-3, micro_batch_size=micro, grad_accumulation_steps=steps)
    got = cfg.batch_split(world)
    assert got == expected and got[0] * got[1] * world == 12
    ds = deepspeed_config(cfg, world)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == expected


@pytest.mark.parametrize("micro, steps, world", [(5, 0, 2), (0, 5, 2), (3, 3, 2), (0, 0, 5)])
def test_batch_split_names_the_keys_when_it_cannot_split(micro, steps, world):
    cfg = TrainConfig(epochs=1, global_batch_size=12, lr=1e-3, micro_batch_size=micro, grad_accumulation_steps=steps)
    with pytest.raises(ValueError, match="global_batch_size 12 .*micro_batch_size"):
        cfg.batch_split(world)


def test_old_batch_size_key_names_its_new_name():
    from ctvlp.config import load_spec

    with pytest.raises(Exception, match="batch_size was renamed: use global_batch_size"):
        load_spec(None, ["phases.phase2.batch_size=8"])


def test_train_config_from_the_real_spec():
    from ctvlp.config import load_spec

    spec = load_spec(None, ["phases.phase2.lr=3e-4", "phases.phase2.global_batch_size=8", "resources.zero_stage=2"])
    cfg = train_config_from_spec(spec, 2, cuda=False)
    assert (cfg.lr, cfg.global_batch_size, cfg.zero_stage, cfg.bf16) == (3e-4, 8, 2, False)
    on_gpu = load_spec(None, ["resources.use_gpu=true"])
    assert train_config_from_spec(on_gpu, 1, cuda=True).bf16 is True
    # channels_last_3d only on a GPU (on CPU it is ~3x slower: bench/results/model_step_small.md)
    assert train_config_from_spec(on_gpu, 1, cuda=True).channels_last is True
    assert cfg.channels_last is False and cfg.checkpoint_every_epochs == 1
    sparse = load_spec(None, ["phases.phase2.checkpoint_every_epochs=4"])
    assert train_config_from_spec(sparse, 2, cuda=False).checkpoint_every_epochs == 4
    off = load_spec(None, ["resources.use_gpu=true", "resources.channels_last=false"])
    assert train_config_from_spec(off, 1, cuda=True).channels_last is False


def test_to_device_lays_out_images_channels_last():
    from ctvlp.loop import to_device

    batch = {"image": torch.rand(2, 1, 4, 6, 8), "mask": torch.zeros(2, 4, 6, 8, dtype=torch.long)}
    out = to_device(batch, torch.device("cpu"), channels_last=True)
    assert out["image"].is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out["image"], batch["image"])
    assert out["mask"].is_contiguous()  # integer masks keep their layout
    assert to_device(batch, torch.device("cpu"))["image"].is_contiguous()


# --------------------------------------------------------------------------- DeepSpeed engine
@pytest.fixture(scope="module")
def process_group():
    from ctvlp.loop import ensure_process_group

    ensure_process_group()  # left in place: DeepSpeed keeps a reference to the first group


def _batch(n=4, seed=0):
    rows = toy_rows(n, seed)
    return {"x": torch.from_numpy(__import__("numpy").stack([r["x"] for r in rows])),
            "y": torch.tensor([float(r["y"]) for r in rows])}


def _engine(cfg=None):
    cfg = cfg or TrainConfig(epochs=2, global_batch_size=4, lr=5e-2, min_lr=1e-4, warmup_epochs=0.5)
    task = ToyTask(seed=0)
    return task, build_engine(task.module, cfg, steps_per_epoch=10)


def test_train_step_reduces_loss_and_follows_the_schedule(process_group):
    task, engine = _engine()
    batch = _batch()
    outs = [train_step(engine, task, batch) for _ in range(20)]
    assert outs[-1]["mse_loss"] < 0.5 * outs[0]["mse_loss"]
    assert outs[0]["loss"] == pytest.approx(outs[0]["mse_loss"])  # sum of the *_loss terms
    expected = [lr_at(s, peak=5e-2, min_lr=1e-4, warmup_steps=5, total_steps=20) for s in range(20)]
    assert [o["lr"] for o in outs] == pytest.approx(expected)
    assert task.after_calls == 20 and "grad_norm" in outs[0] and "pred_mean" in outs[0]


def test_accumulation_matches_the_same_global_batch_without_it(process_group):
    """Float32, one process: 2 micro-batches of 4 accumulated == 1 batch of 8, step for step.
    The toy loss is a per-sample mean, so the two are the same objective; equal up to the order
    of float sums (stated tolerance 1e-5 relative on weights and losses over 6 steps)."""
    def run(micro, steps):
        cfg = TrainConfig(epochs=1, global_batch_size=8, lr=5e-2, min_lr=1e-4, warmup_epochs=0.5,
                          micro_batch_size=micro, grad_accumulation_steps=steps)
        task = ToyTask(seed=0)
        engine = build_engine(task.module, cfg, steps_per_epoch=6)
        outs = []
        for s in range(6):
            full = _batch(8, seed=s)
            parts = [{k: v[i:i + micro] for k, v in full.items()} for i in range(0, 8, micro)]
            outs.append(train_step(engine, task, parts if steps > 1 else full))
        return outs, [p.detach().clone() for p in task.module.parameters()], task

    whole, w_whole, t_whole = run(8, 1)
    accum, w_accum, t_accum = run(4, 2)
    assert [o["lr"] for o in whole] == [o["lr"] for o in accum]
    assert [o["loss"] for o in accum] == pytest.approx([o["loss"] for o in whole], rel=1e-5)
    for a, b in zip(w_whole, w_accum):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert t_whole.after_calls == t_accum.after_calls == 6  # after_step once per optimiser step
    with pytest.raises(ValueError, match="2 micro-batches"):
        _, e = _engine()
        train_step(e, ToyTask(seed=0), [_batch(), _batch()])


def test_train_step_rejects_missing_keys_and_lossless_tasks(process_group):
    task, engine = _engine()
    with pytest.raises(KeyError, match="requires"):
        train_step(engine, task, {"x": torch.zeros(4, 1, 8, 8, 8)})
    task.training_step = lambda batch: ({"mse": torch.tensor(1.0)}, {})
    with pytest.raises(ValueError, match="_loss"):
        train_step(engine, task, _batch())


def test_checkpoint_round_trip_restores_weights_optimizer_schedule_and_state(process_group, tmp_path):
    task, engine = _engine()
    for _ in range(3):
        train_step(engine, task, _batch())
    state = TrainState(phase=2, epoch=0, step=3, step_in_epoch=3, samples_seen=12)
    save_checkpoint(engine, tmp_path, state)
    saved_params = {k: v.clone() for k, v in engine.module.state_dict().items()}
    saved_digest = state_digest(engine)

    task2, engine2 = _engine()  # fresh weights (other seed path): must be overwritten
    restored = load_checkpoint(engine2, tmp_path)
    assert restored == state
    for k, v in engine2.module.state_dict().items():
        assert torch.equal(v, saved_params[k]), k
    assert state_digest(engine2) == saved_digest
    assert engine2.get_lr() == engine.get_lr()  # schedule position restored
    # the next step is identical for the original and the restored engine
    a, b = train_step(engine, task, _batch(seed=1)), train_step(engine2, task2, _batch(seed=1))
    assert a["loss"] == b["loss"] and a["lr"] == b["lr"]
    assert all(torch.equal(x, y) for x, y in zip(engine.module.parameters(), engine2.module.parameters()))


def test_load_checkpoint_detects_tampering_and_absence(process_group, tmp_path):
    task, engine = _engine()
    train_step(engine, task, _batch())
    save_checkpoint(engine, tmp_path / "c", TrainState(phase=1, step=1))
    digest_file = tmp_path / "c" / "digest_rank0.json"
    digest = json.loads(digest_file.read_text())
    digest_file.write_text(json.dumps({**digest, "model_sha256": "0"}))
    with pytest.raises(RuntimeError, match="differs"):
        load_checkpoint(engine, tmp_path / "c")
    digest_file.write_text(json.dumps({"model_sha256": "0", "optimizer_sha256": "0"}))  # no file digests
    with pytest.raises(RuntimeError, match="records no file digests"):
        load_checkpoint(engine, tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(engine, tmp_path / "empty")


class _Payload:
    """A pickle that writes a marker file when unpickled (what a tampered checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


@pytest.mark.parametrize("tamper", ["replace", "add"])
def test_a_tampered_checkpoint_file_is_refused_before_it_is_unpickled(process_group, tmp_path, tamper):
    import pickle

    task, engine = _engine()
    train_step(engine, task, _batch())
    ckpt = tmp_path / "c"
    save_checkpoint(engine, ckpt, TrainState(phase=1, step=1))
    marker = tmp_path / "pwned"
    target = sorted((ckpt / "ds").glob("mp_rank_*"))[0] if tamper == "replace" else ckpt / "ds" / "extra.pt"
    target.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(RuntimeError, match="refusing to unpickle"):
        load_checkpoint(engine, ckpt)
    assert not marker.exists()


def test_export_safetensors_round_trip(tmp_path):
    task = ToyTask(seed=3)
    path = export_safetensors(task.module, tmp_path, {"kind": "toy", "width": 4})
    other = ToyTask(seed=4).module
    load_safetensors(other, path)
    for a, b in zip(task.module.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "model.json").read_text().count('"width": 4') == 1

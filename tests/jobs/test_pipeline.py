"""Phase chaining through jobs.pipeline: phase 2 starts from phase 1's exported weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.jobs.toy_task import TOY_FACTORY, toy_rows


@pytest.mark.slow
def test_phase2_starts_from_phase1_export(ray_session, tmp_path):
    import ray
    from safetensors.torch import load_file

    from ctvlp.config import load_spec
    from jobs.pipeline import run_pipeline

    rows = toy_rows(32, seed=1)
    phase = lambda n, lr: [f"phases.phase{n}.{kv}" for kv in  # noqa: E731
                           ("epochs=1", "global_batch_size=8", f"lr={lr}", f"min_lr={lr / 100}", "warmup_epochs=0.5")]
    spec = load_spec(None, [f"storage.root={tmp_path / 'runs'}", "name=chain", "resources.num_workers=2",
                            *phase(1, 0.05), *phase(2, 1e-9)])  # phase 2 barely moves: weights ~= its init
    results = run_pipeline(spec, phases=(1, 2), datasets={"train": ray.data.from_items(rows)},
                           num_train_rows=len(rows), task_factory=TOY_FACTORY)

    w1 = load_file(str(Path(results[1].export_uri) / "model.safetensors"))
    w2 = load_file(str(Path(results[2].export_uri) / "model.safetensors"))
    fresh = load_file(str(_fresh_export(tmp_path) / "model.safetensors"))
    for key in w1:
        assert torch.allclose(w2[key], w1[key], atol=1e-6), key  # started from phase 1's weights
    assert any(not torch.allclose(w1[k], fresh[k], atol=1e-3) for k in w1)  # phase 1 did train
    # the resolved URI is recorded in phase 2's resolved spec (checkpoint and export)
    for directory in (Path(results[2].checkpoint_uri), Path(results[2].export_uri)):
        recorded = yaml.safe_load((directory / "resolved_spec.yaml").read_text())
        assert recorded["phases"]["phase2"]["init"]["vision_encoder"] == results[1].export_uri


def _fresh_export(tmp_path: Path) -> Path:
    from tests.jobs.toy_task import ToyTask

    out = tmp_path / "fresh"
    ToyTask(seed=0).export(out)
    return out


@pytest.mark.slow
def test_debug_pipeline_in_bf16_with_zero2_on_two_workers(ray_session, tmp_path):
    """The GPU path's configuration on CPU: phases 1-4 of the debug spec with resources.bf16=true
    and ZeRO-2 on two Ray Train workers (gloo), real tasks on shards; every export float32."""
    import json

    from safetensors.torch import load_file

    from ctvlp.config import load_spec
    from jobs.pipeline import run_pipeline
    from tests.jobs.shards import write_tiny_shards

    spec = load_spec("jobs/specs/debug.yaml", [
        f"storage.root={tmp_path / 'runs'}", f"data.shards_uri={tmp_path / 'shards'}", "name=bf16z2",
        "data.grouping=chest", "resources.bf16=true", "resources.zero_stage=2", "resources.num_workers=2",
        "resources.cpus_per_worker=0.5",  # a CPU left for Ray Data on the 2-CPU test cluster
        *[f"phases.phase{p}.max_steps_per_epoch=2" for p in (1, 2, 3, 4)]])
    write_tiny_shards(spec.data.shards_uri, num_studies=16, num_anatomies=spec.data.num_anatomies,
                      shape=(40, 44, 44), studies_per_shard=4)
    results = run_pipeline(spec)
    assert sorted(results) == [1, 2, 3, 4]
    for phase, result in results.items():
        tensors = load_file(str(Path(result.export_uri) / "model.safetensors"))
        assert tensors and all(t.dtype == torch.float32 for t in tensors.values() if t.is_floating_point()), phase
        meta = json.loads((Path(result.checkpoint_uri) / "meta.json").read_text())
        assert meta["train_config"]["bf16"] is True and meta["train_config"]["zero_stage"] == 2, phase
        assert meta["train_state"]["step"] == 2, phase

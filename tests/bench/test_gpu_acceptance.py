"""bench/gpu_acceptance.py, the GPU script, as a CPU smoke run at a tiny size: every entry (bare
encoder, the four phases' real training steps, evaluation) yields figures and the files are
written. The GPU figures themselves come from a lent GPU (bench/results/gpu_acceptance.md)."""

from __future__ import annotations

import json

from bench import gpu_acceptance as ga


def test_smoke_run_measures_every_entry(tmp_path):
    out = tmp_path / "ga.json"
    results = ga.main(["--small", "--anatomies", "4", "--steps", "1", "--warmup", "0",
                       "--crop", "32", "32", "32", "--out", str(out)])
    keys = {f"{n}/M4" for n in ("encoder", "phase1", "phase2", "phase3", "phase4", "eval")}
    assert set(results["entries"]) == keys
    for key, entry in results["entries"].items():
        assert "error" not in entry, (key, entry)
        assert entry["samples_per_s"] > 0 and entry["tflop_per_step"] > 0, key
    assert results["entries"]["phase2/M4"]["bf16"] is True  # the GPU path's precision, on CPU
    assert json.loads(out.read_text())["entries"].keys() == results["entries"].keys()
    assert "| phase4 | 4 |" in out.with_suffix(".md").read_text()


def test_synthetic_batch_keeps_every_anatomy_intact():
    from ctvlp.models.tokens import intact_anatomies

    batch = ga.synthetic_batch(2, (32, 64, 64), 16, ga.torch.device("cpu"))
    assert batch["mask"].max() == 16 and bool(intact_anatomies(batch["mask"], 16).all())
    assert batch["text_ids"].shape[:2] == (2, 16) and batch["text_mask"][..., 0].all()

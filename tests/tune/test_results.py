"""tune.results: ranking, the Markdown/CSV table, the objective plot and the best spec file."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ctvlp.config import load_spec
from tune import results
from tune.sweep import best_spec

KEYS = ["model.vq.codebook_size", "model.vq.beta"]


def fake_results():
    def r(tid, k, beta, auc, step, error=None):
        metrics = {} if auc is None else {"val_normality_auc": auc, "val_recon_loss": 1 - auc, "step": step,
                                          "trial_id": tid, "checkpoint_path": f"/ckpt/{tid}"}
        return {"trial_id": tid, "config": {KEYS[0]: k, KEYS[1]: beta}, "metrics": metrics, "error": error, "path": "/x"}

    return [r("a", 8, 0.3, 0.61, 2), r("b", 16, 0.5, 0.74, 6), r("c", 32, 0.9, 0.70, 6),
            r("d", 4, 0.2, None, None, error="RayTaskError(ValueError)\nValueError: boom"), r("e", 8, 0.7, 0.55, 4),
            r("f", 16, 0.4, None, None)]  # interrupted before its first report


@pytest.mark.parametrize("mode, order", [("max", ["b", "c", "a", "e", "d", "f"]),
                                         ("min", ["e", "a", "c", "b", "d", "f"])])
def test_trials_frame_ranks_and_flags(mode, order):
    df = results.trials_frame(fake_results(), KEYS, "val_normality_auc", mode, total_steps=6)
    assert df["trial_id"].tolist() == order and df.index.tolist() == [1, 2, 3, 4, 5, 6]
    by_id = df.set_index("trial_id")
    assert by_id.loc["a", "stopped_early"] and by_id.loc["e", "stopped_early"] and not by_id.loc["b", "stopped_early"]
    assert by_id.loc["d", "status"] == "error" and by_id.loc["d", "error"] == "ValueError: boom"
    assert by_id.loc["f", "status"] == "no result" and by_id.loc["b", "status"] == "completed"
    assert math.isnan(by_id.loc["d", "val_normality_auc"])
    assert by_id.loc["b", "val_recon_loss"] == pytest.approx(0.26)
    assert by_id.loc["b", "param:model.vq.codebook_size"] == 16


def test_write_results_files_and_best_spec(tmp_path):
    df = results.trials_frame(fake_results(), KEYS, "val_normality_auc", "max", total_steps=6)
    spec = load_spec("jobs/specs/tune_debug.yaml", ["phases.phase3.init.vision_encoder=/exports/p2"])
    best = best_spec(spec, {k: df.iloc[0]["param:" + k] for k in KEYS})
    paths = results.write_results(df, tmp_path, param_keys=KEYS, metric="val_normality_auc", title="t",
                                  best_spec=best, log_keys=("model.vq.beta",))
    back = pd.read_csv(paths["csv"], index_col="rank")
    assert back["trial_id"].tolist() == df["trial_id"].tolist()
    md = paths["markdown"].read_text()
    assert md.count("\n| ") == 1 + 6 and "| 1 | b | 16 | 0.5 | 0.74 |" in md and "/ckpt/" not in md
    assert paths["plot"].stat().st_size > 5000
    loaded = load_spec(paths["best_spec"])  # loads and validates
    assert loaded.model.vq.codebook_size == 16 and loaded.model.vq.beta == 0.5
    assert loaded.phases.phase3.init.vision_encoder == "/exports/p2"
    assert loaded.phases.phase3.epochs == spec.phases.phase3.epochs  # the user's schedule, not the trials'


def test_best_spec_resolves_phase_references():
    spec = load_spec("jobs/specs/tune_debug.yaml")  # phase3.init.vision_encoder: phase2
    best = best_spec(spec, {"model.vq.beta": 0.4})
    assert best.phases.phase3.init.vision_encoder.endswith("/export") and "phase2" in best.phases.phase3.init.vision_encoder

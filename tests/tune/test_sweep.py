"""tune.sweep: the CLI's dry run (fast) and a 4-trial phase-3 sweep on cached tokens (slow)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ctvlp.config import load_spec
from tests.tune.data import SPEC, make_sweep_inputs
from tune import sweep


def test_dry_run_prints_the_plan(capsys):
    assert sweep.main(["--spec", SPEC, "--dry-run", "phases.phase3.init.vision_encoder=/exports/p2"]) == 0
    out = capsys.readouterr().out
    assert "val_normality_auc (max)" in out and "rungs at steps [2, 4]" in out and "/exports/p2" in out
    assert "model.vq.codebook_size" in out and "driver 0.01 CPU" in out


def test_dry_run_refuses_a_bad_objective(capsys):
    assert sweep.main(["--spec", SPEC, "--dry-run", "tune.objective=zero_shot_auc"]) == 2
    assert "does not apply to phase 3" in capsys.readouterr().err


def test_sweep_name_is_stable_and_changes_with_the_spec():
    a, b = load_spec(SPEC), load_spec(SPEC, ["tune.num_trials=5"])
    assert sweep.sweep_name(a) == sweep.sweep_name(load_spec(SPEC)) != sweep.sweep_name(b)
    assert sweep.sweep_name(a).startswith("tune-debug-tune-phase3-")


@pytest.fixture(scope="module")
def sweep_out(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    overrides = make_sweep_inputs(root)
    spec = load_spec(SPEC, [*overrides, "storage.server_side_encryption=null"])
    return spec, sweep.run_sweep(spec)


@pytest.mark.slow
def test_four_trial_sweep_completes_with_asha_stops(sweep_out):
    spec, out = sweep_out
    df = out["table"]
    assert len(df) == 4 and (df["status"] != "error").all(), df[["status", "error"]]
    assert out["max_concurrent"] == 2  # 2 CPUs: 2 x (0.99 worker + 0.01 driver), data materialised
    assert df["stopped_early"].sum() >= 1  # ASHA stopped at least one trial before its last step
    assert (df.loc[~df["stopped_early"], "last_step"] == out["schedule"].total_steps).all()
    auc = df["val_normality_auc"]
    assert auc.notna().all() and ((auc >= 0) & (auc <= 1)).all()
    assert df["val_recon_loss"].notna().all() and (df["val_recon_loss"] > 0).all()
    assert auc.is_monotonic_decreasing  # ranked best first
    paths = {k: Path(v) for k, v in out["paths"].items()}
    assert pd.read_csv(paths["csv"]).shape[0] == 4 and paths["plot"].stat().st_size > 5000
    assert "| 1 |" in paths["markdown"].read_text()
    # the token cache is built once per sweep and reused by a rerun
    assert (Path(out["sweep_uri"]) / "token_cache" / "_done").is_file()


@pytest.mark.slow
def test_best_spec_loads_validates_and_runs(sweep_out, capsys):
    from jobs.launch import main_phase, run_phase

    spec, out = sweep_out
    best = load_spec(out["paths"]["best_spec"])
    row = out["table"].iloc[0]
    assert best.model.vq.codebook_size == row["param:model.vq.codebook_size"]
    assert best.model.vq.beta == pytest.approx(row["param:model.vq.beta"])
    assert best.phases.phase3.init.vision_encoder == spec.phases.phase3.init.vision_encoder
    assert main_phase(3, ["--spec", out["paths"]["best_spec"], "--dry-run"]) == 0
    assert f"codebook_size: {best.model.vq.codebook_size}" in capsys.readouterr().out
    # a short phase-3 run of the best spec on Ray Train: jobs/launch.py encodes the run's own token
    # cache once (train split) with the frozen encoder, then the VQ-VAE trains on it
    short = load_spec(out["paths"]["best_spec"], ["phases.phase3.max_steps_per_epoch=2", "resources.num_workers=1"])
    assert short.phases.phase3_cached_tokens
    result = run_phase(short, 3)
    assert Path(result.export_uri, "model.safetensors").is_file() and result.metrics["step"] == 2
    assert (Path(result.run_uri) / "token_cache" / "_done").read_text() == "train"

"""jobs.capacity: the plan scales as its inputs say, reads measured figures, labels estimates."""

from __future__ import annotations

import json

import pytest

from ctvlp.config import load_spec
from jobs import capacity


@pytest.fixture()
def results(tmp_path):
    (tmp_path / "ingest.json").write_text(json.dumps({"volumes_per_s_per_core": 1.0, "load_avg_1min": 0.5}))
    (tmp_path / "loader.json").write_text(json.dumps({
        "ours": {"samples_per_cpu_s": 10.0}, "crop_size": [112, 256, 352], "shards_mb_per_study": 5.8}))
    return tmp_path


def _plan(results, *overrides):
    plan = capacity.load_plan(None, [f"results_dir={results}", *overrides])
    job = load_spec(plan.job_spec, plan.job_overrides)
    stages, bill = capacity.plan_stages(plan, job)
    return plan, job, {s.name.split(" (")[0]: s for s in stages}, bill


def test_gpu_stages_scale_with_gpus_and_volumes(results):
    _, _, base, bill = _plan(results)
    _, _, twice_gpus, _ = _plan(results, "cluster.num_gpus=32")
    _, _, twice_data, bill2 = _plan(results, "dataset.num_volumes=544248")
    for name in ("phase 1", "phase 2", "phase 4", "segmentation"):
        assert twice_gpus[name].wall_h == pytest.approx(base[name].wall_h / 2)
        assert twice_data[name].wall_h == pytest.approx(base[name].wall_h * 2)
    assert twice_data["ingest CPU stage"].wall_h == pytest.approx(2 * base["ingest CPU stage"].wall_h)
    assert bill2["shard_gb"] == pytest.approx(2 * bill["shard_gb"])
    # 272,124 volumes in 512 vCPUs at 1 volume/s each
    assert base["ingest CPU stage"].wall_h == pytest.approx(272_124 / 512 / 3600)


def test_spot_share_lowers_the_cost_not_the_time(results):
    _, _, spot, _ = _plan(results, "cluster.spot_fraction=1.0")
    _, _, on_demand, _ = _plan(results, "cluster.spot_fraction=0.0")
    assert spot["phase 1"].wall_h == on_demand["phase 1"].wall_h
    assert spot["phase 1"].cost < on_demand["phase 1"].cost


def test_estimates_are_labelled_and_measured_figures_replace_them(results):
    _, _, est, _ = _plan(results)
    assert est["phase 2"].figure.startswith("estimate: 45/s")
    (results / "gpu_acceptance.json").write_text(json.dumps({"entries": {"phase2/M16": {"samples_per_s": 27.0}}}))
    _, _, meas, _ = _plan(results)
    assert meas["phase 2"].figure.startswith("measured: gpu_acceptance.json")
    assert meas["phase 2"].wall_h == pytest.approx(est["phase 2"].wall_h * 0.6 * 45 / 27)


def test_a_slow_loader_makes_a_phase_data_bound(results):
    (results / "loader.json").write_text(json.dumps({
        "ours": {"samples_per_cpu_s": 0.1}, "crop_size": [112, 256, 352], "shards_mb_per_study": 5.8}))
    _, _, stages, _ = _plan(results)
    assert "DATA-BOUND" in stages["phase 1"].figure


def test_unknown_keys_are_refused_and_the_cli_prints_the_dominant_stage(results, capsys):
    with pytest.raises(Exception, match="extra"):
        capacity.load_plan(None, ["cluster.num_gpu=16"])
    assert capacity.main([f"results_dir={results}"]) == 0
    out = capsys.readouterr().out
    assert "Dominant stage:" in out and "272,124 volumes" in out and "estimate" in out

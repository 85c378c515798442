"""The method comparison (jobs/compare.py): the budget rule, seeds and shared runs, the paired
table; and (slow tier) the whole command on tiny shards with two methods."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctvlp.config import SpecError, load_spec
from ctvlp.eval.metrics import evaluate, frames_from_arrays
from jobs import compare


@pytest.fixture(scope="module")
def base():
    return load_spec("jobs/specs/debug.yaml", ["compare.budget_epochs=12"])


@pytest.mark.parametrize("rule, phases, epochs", [
    ("paper", (1, 2, 3, 4), {1: 6, 2: 3, 3: 6, 4: 3}),  # 60/30/60/30 of the 120 counted
    ("paper", (2,), {2: 3}),  # a row trains its phases exactly as the reference recipe
    ("equal", (2,), {2: 12}),  # ... or spends the whole counted budget on them
    ("equal", (1, 2), {1: 8, 2: 4}),
    ("equal", (1, 2, 3, 4), {1: 6, 2: 3, 3: 6, 4: 3}),
])
def test_budget_rule(base, rule, phases, epochs):
    spec = load_spec("jobs/specs/debug.yaml", ["compare.budget_epochs=12", f"compare.budget_rule={rule}"])
    assert compare.phase_epochs(spec.compare, phases) == epochs


def test_plan_seeds_epochs_and_shared_runs(base):
    from jobs.plan import resolve_phase, run_name

    runs = compare.plan_runs(base)
    labels = [r.label for r in runs]
    assert labels == ["clip-seed0", "fvlm-seed0", "p2_only-seed0", "p2_only-seed1", "p2_only-seed2",
                      "vsei-seed0", "p1_p2-seed0", "full-seed0", "full-seed1", "full-seed2"]
    by = {r.label: r for r in runs}
    assert by["full-seed2"].spec.seed == base.seed + 2 and by["full-seed0"].phases == (1, 2, 3, 4)
    assert [by["full-seed0"].spec.phase(n).epochs for n in (1, 2, 3, 4)] == [6, 3, 6, 3]
    name = lambda r, n: run_name(resolve_phase(by[r].spec, n), n)  # noqa: E731
    assert name("p1_p2-seed0", 1) == name("full-seed0", 1) and name("p1_p2-seed0", 2) == name("full-seed0", 2)
    assert name("full-seed0", 1) != name("full-seed1", 1)  # seeds train their own runs
    assert name("vsei-seed0", 1) != name("full-seed0", 1)  # instance vs disease contrast
    assert by["clip-seed0"].spec.model.alignment == "global" and by["vsei-seed0"].spec.model.visual_contrast == "instance"


def test_other_methods_plan_phase2_alone_with_their_task(base):
    """``asg`` and ``medslip`` train phase 2 alone from a fresh encoder with their task, under
    names of their own; ``p2_only`` keeps the name it has without them."""
    from jobs.plan import resolve_phase, run_name

    spec = load_spec("jobs/specs/debug.yaml", ["compare.budget_epochs=12",
                                               "compare.methods=[p2_only,asg,medslip,full]"])
    by = {r.label: r for r in compare.plan_runs(spec)}
    assert [k for k in by if k.split("-")[0] in ("asg", "medslip")] == ["asg-seed0", "medslip-seed0"]
    for row in ("asg", "medslip"):
        run = by[f"{row}-seed0"]
        assert run.phases == (2,) and run.spec.methods.phase2_task == row
        assert run.spec.phase(2).init.vision_encoder is None and run.spec.phase(2).epochs == 3
    name = lambda r: run_name(resolve_phase(by[r].spec, 2), 2)  # noqa: E731
    assert len({name("p2_only-seed0"), name("asg-seed0"), name("medslip-seed0")}) == 3
    alone = {r.label: r for r in compare.plan_runs(base)}
    assert name("p2_only-seed0") == run_name(resolve_phase(alone["p2_only-seed0"].spec, 2), 2)


def test_method_settings_name_only_the_runs_they_train():
    """jobs/plan.py ``phase_fingerprint``: the ``methods`` section enters a run's name only where
    another method trains phase 2, and then only its own subsection (plus the task and findings)."""
    from jobs.plan import run_name

    debug = lambda *o: load_spec("jobs/specs/debug.yaml", list(o))  # noqa: E731
    plain, tweaked = debug(), debug("methods.medslip.num_negatives=3", "methods.asg.irl_weight=2")
    for n in (1, 2, 3, 4):
        assert run_name(plain, n) == run_name(tweaked, n), n  # alignment runs keep their names
    asg = debug("methods.phase2_task=asg")
    assert run_name(asg, 2) != run_name(plain, 2)
    assert run_name(asg, 1) == run_name(plain, 1)  # phase 1 is not trained by a method
    assert run_name(debug("methods.phase2_task=asg", "methods.medslip.num_negatives=3"), 2) == run_name(asg, 2)
    assert run_name(debug("methods.phase2_task=asg", "methods.asg.irl_weight=2"), 2) != run_name(asg, 2)
    # how an export is scored does not change what trains: an ASG run keeps its name, and its
    # export is re-scored without retraining (jobs/plan.py EVAL_ONLY)
    for mode in ("global", "region"):
        assert run_name(debug("methods.phase2_task=asg", f"methods.asg.zero_shot={mode}"), 2) == run_name(asg, 2)


def test_unknown_rows_and_reference_fail(base):
    with pytest.raises(ValueError, match="not rows of"):
        compare.plan_runs(load_spec("jobs/specs/debug.yaml", ["compare.methods=[p2_only,nope]",
                                                              "compare.reference=p2_only"]))
    with pytest.raises(SpecError, match="compare.reference"):
        load_spec("jobs/specs/debug.yaml", ["compare.methods=[clip,p2_only]"])


def _fake_results(rows_noise: dict[str, list[float]], n: int = 80):
    """EvalResults of made-up models: labels of 3 diseases on 2 anatomies, scores = label + noise."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(n, 3)).astype(float)
    ids, names = [f"s{i:03d}" for i in range(n)], ["A", "B", "C"]
    runs, results, scores = [], {}, {}
    for row, noises in rows_noise.items():
        for k, noise in enumerate(noises):
            run = compare.RowRun(row, k, None, (2,), steps={2: 10}, train_s={2: 5.0})
            s = 1 / (1 + np.exp(-((2 * y - 1) + noise * rng.normal(size=y.shape))))
            labels, frame = frames_from_arrays(ids, names, y, s)
            results[run.label] = evaluate(labels, frame, {"A": "lung", "B": "lung", "C": "heart"}, n_bootstrap=0)
            runs.append(run)
            scores[run.label] = frame
    return runs, results, labels, scores


def test_table_paired_difference_seeds_and_columns():
    runs, results, labels, scores = _fake_results({"weak": [3.0], "strong": [0.8, 0.9, 1.0]})
    table = compare.comparison_table(runs, results, labels, scores, reference="strong", n_bootstrap=200)
    assert list(table.index) == ["weak", "strong"] and table.at["strong", "seeds"] == 3
    macro = np.mean([results[f"strong-seed{k}"].summary["macro"]["auc"] for k in range(3)])
    assert table.at["strong", "macro_auc"] == pytest.approx(macro)
    assert table.at["strong", "diff_vs_ref"] == 0 and table.at["strong", "diff_ci_high"] == 0
    assert table.at["weak", "diff_ci_high"] < 0 < table.at["strong", "macro_auc"] - table.at["weak", "macro_auc"]
    for row in table.index:
        assert table.at[row, "auc_ci_low"] <= table.at[row, "macro_auc"] <= table.at[row, "auc_ci_high"]
    assert {"auc_lung", "auc_heart", "steps", "train_s", "seed_sd"} <= set(table.columns)
    assert np.isnan(table.at["weak", "seed_sd"]) and table.at["strong", "seed_sd"] > 0
    md = compare.table_markdown(table, "strong")
    assert md.count("\n") == 3 and "vs strong" in md and "lung" in md and "p2 10" in md


def test_identical_models_differ_by_exactly_zero():
    runs, results, labels, scores = _fake_results({"a": [1.0], "b": [1.0]})
    scores["b-seed0"] = scores["a-seed0"].copy()
    results["b-seed0"] = results["a-seed0"]
    table = compare.comparison_table(runs, results, labels, scores, reference="a", n_bootstrap=100)
    assert table.at["b", "diff_ci_low"] == table.at["b", "diff_ci_high"] == 0.0


def test_dry_run_lists_every_row_and_seed(capsys):
    assert compare.main(["--spec", "jobs/specs/debug.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "full-seed2" in out and "reuses phases [1, 2]" in out and "CLIP" in out
    assert compare.main(["--spec", "jobs/specs/debug.yaml", "--dry-run",
                         "compare.methods=[p2_only,asg,medslip,full]"]) == 0
    out = capsys.readouterr().out
    assert "asg-seed0" in out and "ASG (3D)" in out and "medslip-seed0" in out and "MeDSLIP (3D)" in out


# ------------------------------------------------------------------------------ slow: the command
def _shard_rows(split: str, n: int, m: int, seed: int) -> list[dict]:
    """Phantom studies (tests/jobs/shards.py) with random labels of every synthetic disease."""
    from ctvlp.diseases import SYNTHETIC
    from tests.jobs.shards import phantom_row

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = phantom_row(f"{split}{i:02d}", split, (40, 40, 40), m, rng)
        row["disease_labels"] = json.dumps({d.name: int(rng.integers(2)) for d in SYNTHETIC})
        rows.append(row)
    return rows


@pytest.mark.slow
def test_compare_two_methods_end_to_end(ray_session, tmp_path):
    """CLIP against phase 2 alone on tiny shards, 2 optimiser steps each: one table in Markdown,
    CSV and HTML with the paired difference, per-anatomy columns, steps and seconds; afterwards
    every phase counts as done, so a rerun would train nothing."""
    from ingest.shards import commit_index, write_group
    from ingest.storage import Storage

    spec = load_spec("jobs/specs/debug.yaml")
    m = spec.data.num_anatomies
    for split, n in (("train", 8), ("test", 12)):
        write_group(_shard_rows(split, n, m, seed=len(split)), f"{split}-00000-of-00001", Storage(sse=None),
                    str(tmp_path / "shards"))
    commit_index(Storage(sse=None), str(tmp_path / "shards"), spec.data.anatomies)  # the readers list shards from it
    base = load_spec("jobs/specs/debug.yaml", [
        f"data.shards_uri={tmp_path / 'shards'}", f"storage.root={tmp_path / 'runs'}", "name=cmp",
        "compare.methods=[clip,p2_only]", "compare.reference=p2_only", "compare.seeds={}",
        "compare.budget_epochs=4", "phases.phase2.max_steps_per_epoch=2", "phases.phase2.checkpoint_every_minutes=0",
        "resources.num_workers=1", "resources.cpus_per_worker=1", "eval.bootstrap_samples=50", "eval.tsne=false"])
    out = compare.compare(base)
    table = out["table"]
    assert list(table.index) == ["clip", "p2_only"] and table.at["p2_only", "diff_vs_ref"] == 0
    assert table.at["clip", "steps"] == "p2 2" and table.at["clip", "train_s"] > 0
    assert np.isfinite(table.at["clip", "diff_ci_low"]) and any(c.startswith("auc_lung") for c in table.columns)
    for name in ("methods.md", "methods.csv", "report.html"):
        assert (tmp_path / "runs" / "cmp-compare" / name).is_file()
    assert "CLIP" in (tmp_path / "runs" / "cmp-compare" / "report.html").read_text()
    assert all(compare.export_done(r.spec, n) for r in out["runs"] for n in r.phases)

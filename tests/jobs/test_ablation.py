"""Ablation rows (paper Table 5): overlays, the phases each row trains, the comparison table."""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp.config import load_spec
from ctvlp.eval.metrics import evaluate, frames_from_arrays
from jobs import ablation


@pytest.fixture(scope="module")
def base():
    return load_spec("jobs/specs/debug.yaml", ["eval.model=/some/export"])


@pytest.mark.parametrize("row, phases, model", [
    ("p2_only", (2,), "phase2"), ("p1_p2", (1, 2), "phase2"), ("full", (1, 2, 3, 4), "phase4")])
def test_rows_train_the_right_phases(base, row, phases, model):
    spec = ablation.row_spec(base, row)
    assert spec.eval.model == model
    assert ablation.required_phases(spec, ablation.eval_phase(spec)) == phases
    # the overlay changes only what it names: the base's model and data survive
    assert spec.model == base.model and spec.data == base.data and spec.name == base.name


def test_rows_share_phase_runs(base):
    """p1_p2 and full train identical phases 1-2 (same run names), p2_only a different phase 2."""
    from jobs.plan import resolve_phase, run_name

    rows = {r: ablation.row_spec(base, r) for r in ablation.ROWS}
    for n in (1, 2):
        assert run_name(resolve_phase(rows["p1_p2"], n), n) == run_name(resolve_phase(rows["full"], n), n)
    assert run_name(resolve_phase(rows["p2_only"], 2), 2) != run_name(resolve_phase(rows["p1_p2"], 2), 2)


def test_unknown_row_and_non_phase_model_fail(base):
    with pytest.raises(ValueError, match="unknown ablation row"):
        ablation.row_spec(base, "nope")
    with pytest.raises(ValueError, match="phase reference"):
        ablation.eval_phase(base)


def test_comparison_table_has_ci_per_row():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(60, 2)).astype(float)
    results = {}
    for row, noise in (("p2_only", 2.0), ("full", 0.3)):
        s = 1 / (1 + np.exp(-((2 * y - 1) + noise * rng.normal(size=y.shape))))
        labels, scores = frames_from_arrays([f"s{i}" for i in range(60)], ["A", "B"], y, s)
        results[row] = evaluate(labels, scores, {"A": "x", "B": "y"}, n_bootstrap=50)
    table = ablation.comparison_table(results)
    assert list(table.index) == ["p2_only", "full"]
    assert table.at["full", "macro_auc"] > table.at["p2_only", "macro_auc"]
    for row in table.index:
        assert table.at[row, "auc_ci_low"] <= table.at[row, "macro_auc"] <= table.at[row, "auc_ci_high"]
    md = ablation.table_markdown(table)
    assert md.count("\n") == 3 and "phases 1-4" in md and "[" in md


def test_dry_run_lists_rows(capsys):
    assert ablation.main(["--spec", "jobs/specs/debug.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "p2_only" in out and "phases [1, 2, 3, 4]" in out

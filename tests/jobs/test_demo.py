"""The demo's quality gate (slow tier): README's main command on its embedded defaults, and its
negative control.

``python jobs/demo.py`` runs exactly as ``make demo`` does (a subprocess with its own local Ray):
synthetic corpus (300 studies) -> ingest -> phases 1-4 -> zero-shot evaluation -> HTML report.
The control runs the same pipeline on the same corpus with the train reports shuffled across
studies (the scoring labels stay true): it must score at most 0.6, otherwise the benchmark leaks
labels through something other than the report text.

The quality floor is what the demo measurably reaches today, not the target: issue 7 asks for a
zero-shot macro AUC of at least 0.85. With a 3x3x3 stem, four HU windows as input channels and
40 phase-2 epochs the demo measured 0.840 (95% CI 0.824-0.856) in 850 s of a quiet 2-core machine
(corpus reused; ~45 s more when generated), and 0.830 / 0.826 with 32 / 52 epochs: the run-to-run
spread is ~0.01 (bench/results/demo_quality.md). Shape findings, stones, calcification and
emphysema score 0.85-1.0; nodules, consolidation, cysts and portal vein thrombi stay near 0.5 in
zero-shot *and* in a linear probe on the same embeddings, so the debug-size encoder trained for
minutes does not see them. ``MIN_MACRO_AUC`` guards what works (a model that learned nothing
scores 0.5) with room for that spread; raise it to 0.85 when the demo gets there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MIN_MACRO_AUC = 0.80  # measured 0.840 (0.826-0.840 at 32-52 phase-2 epochs); the target is 0.85


def _run_demo(out: Path, *extra: str) -> tuple[dict, str]:
    cmd = [sys.executable, str(REPO / "jobs" / "demo.py"), "--out", str(out), *extra]
    # The demo starts its own local Ray, as `make demo` does: hide any Ray of this test session.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_USAGE_STATS_ENABLED"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=2400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = "control" if "--shuffle-reports" in extra else "main"
    return json.loads((out / name / "demo_result.json").read_text()), proc.stdout


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, _run_demo(out)


@pytest.mark.slow
def test_demo_reaches_its_quality_floor(demo_out):
    out, (result, stdout) = demo_out
    print(json.dumps(result, indent=2))  # shown with a failure: the per-disease table
    assert result["num_studies"] == 300 and not result["shuffled_reports"]
    assert result["num_diseases"] >= 10
    lo, hi = result["macro_auc_ci"]
    assert lo <= result["macro_auc"] <= hi
    assert result["macro_auc"] >= MIN_MACRO_AUC, result["per_disease_auc"]
    shape_findings = ("Splenomegaly", "Small bowel dilatation", "Adrenal nodule", "Hiatal hernia")
    assert min(result["per_disease_auc"][d] for d in shape_findings) >= 0.8, result["per_disease_auc"]
    report = Path(result["report"])
    assert report.is_file() and report.read_text().count("<img") >= 3
    assert "macro AUC" in stdout and str(report) in stdout
    for phase in (1, 2, 3, 4):  # every phase left an export that the next one started from
        assert list((out / "main" / "runs").glob(f"demo-phase{phase}-*/export/model.safetensors"))
    # phase 3 trained on the token cache that its frozen encoder wrote once
    assert list((out / "main" / "runs").glob("demo-phase3-*/token_cache/_done"))


@pytest.mark.slow
def test_shuffled_reports_control_scores_near_chance(demo_out):
    out, _ = demo_out  # the same corpus: only the train reports are permuted
    result, _ = _run_demo(out, "--shuffle-reports")
    print(json.dumps(result, indent=2))
    assert result["shuffled_reports"] and result["num_studies"] == 300
    assert math.isfinite(result["macro_auc"]) and result["macro_auc"] <= 0.6, result["per_disease_auc"]

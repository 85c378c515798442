"""The demo's quality gate (slow tier): README's main command on its embedded defaults, and its
negative control.

``python jobs/demo.py`` runs exactly as ``make demo`` does (a subprocess with its own local Ray):
synthetic corpus (900 studies) -> ingest -> phases 1-4 -> zero-shot evaluation -> HTML report.
The control runs the same pipeline on the same corpus with the train reports shuffled across
studies (the scoring labels stay true): it must score at most 0.6, otherwise the benchmark leaks
labels through something other than the report text.

The floor is issue 7's target, a zero-shot macro AUC of at least 0.85. With 900 studies and the
step budget of jobs/specs/demo.yaml the demo measured 0.864 (95% CI 0.855-0.873) in 892 s of a
quiet 2-core machine (bench/results/demo_quality.md; 300 studies at the same steps: 0.840).
Shape findings, stones, calcification, emphysema and fatty liver score 0.8-1.0; cysts and portal
vein thrombi stay near 0.5 in zero-shot *and* in a linear probe on the same embeddings.
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
MIN_MACRO_AUC = 0.85  # issue 7's target; measured 0.864 (0.855-0.873)
NUM_STUDIES = 900  # jobs/demo.py's default


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
    assert result["num_studies"] == NUM_STUDIES and not result["shuffled_reports"]
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
    assert result["shuffled_reports"] and result["num_studies"] == NUM_STUDIES
    assert math.isfinite(result["macro_auc"]) and result["macro_auc"] <= 0.6, result["per_disease_auc"]


def test_the_demo_ends_with_the_predictor_on_a_raw_test_scan(case, job_outputs, tmp_path):
    """jobs/demo.py's last stage on a debug-size case: an export the evaluation has written
    evaluation.json into, one raw test scan of the corpus, top findings next to the truth."""
    import shutil

    import numpy as np

    from ctvlp.eval.metrics import evaluate, frames_from_arrays
    from ingest.storage import Storage
    from jobs.demo import predict_one_scan
    from jobs.evaluate import record_in_export

    export = tmp_path / "export"
    shutil.copytree(case.export, export)
    diseases = case.spec.eval.disease_list(case.spec.data)
    scores = job_outputs["scores"]
    labels = np.where(np.isfinite(scores), (scores >= np.nanmedian(scores, axis=0)).astype(float), np.nan)
    result = evaluate(*frames_from_arrays(job_outputs["study_id"], [d.name for d in diseases], labels, scores),
                      n_bootstrap=0)
    record_in_export(str(export), {"zero-shot (threshold on the evaluated set)": result}, diseases, split="test",
                     num_scans=len(scores), report="", storage=Storage(sse=None))
    out = predict_one_scan(str(export), case.corpus, top=3)
    text = out["text"]
    assert out["volume"].startswith("valid_") and f"{out['volume']} (test split" in text
    assert len(out["top_findings"]) == 3 and text.count("\n") == 3 + 3
    assert "labels table: positive for" in text and "report impression:" in text
    assert any(f["call"] is not None for f in out["top_findings"])  # the evaluation's thresholds give calls
    row = text.splitlines()[2].split()
    assert row[-1] in ("positive", "negative") and row[-2] in ("yes", "no", "-")

"""The demo end to end (slow tier): corpus -> ingest -> phases 1-4 -> evaluate -> report.

A reduced run (fewer studies and epochs than ``make demo``) in a subprocess, with its own local
Ray, exactly as README's main command runs it.
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


@pytest.mark.slow
def test_demo_runs_the_whole_spine(tmp_path):
    cmd = [sys.executable, str(REPO / "jobs" / "demo.py"), "--num-studies", "48", "--min-test-positives", "1",
           "--out", str(tmp_path), "phases.phase1.epochs=1", "phases.phase2.epochs=1",
           "phases.phase3.epochs=1", "phases.phase3.batch_size=16", "phases.phase4.epochs=1",
           "eval.bootstrap_samples=50"]
    # The demo starts its own local Ray, as `make demo` does: hide any Ray of this test session.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_USAGE_STATS_ENABLED"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "main" / "demo_result.json").read_text())
    assert math.isfinite(result["macro_auc"]) and 0.0 <= result["macro_auc"] <= 1.0
    assert result["num_diseases"] > 0
    report = Path(result["report"])
    assert report.is_file() and report.read_text().count("<img") >= 3
    assert "macro AUC" in out.stdout and str(report) in out.stdout
    for phase in (1, 2, 3, 4):  # every phase left an export that the next one started from
        assert list((tmp_path / "main" / "runs").glob(f"demo-phase{phase}-*/export/model.safetensors"))

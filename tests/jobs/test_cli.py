"""Entry points: ``--spec`` + dotted overrides + ``--dry-run``; phase references and run names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ctvlp.config import load_spec
from jobs import pipeline
from jobs.launch import main_phase
from jobs.plan import plan_for, resolve_phase, run_name


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_dry_run_prints_the_resolved_plan(phase, capsys, tmp_path):
    root = tmp_path / "runs"
    assert main_phase(phase, ["--dry-run", f"storage.root={root}", f"phases.phase{phase}.epochs=3"]) == 0
    out = capsys.readouterr().out
    spec = load_spec(None, [f"storage.root={root}", f"phases.phase{phase}.epochs=3"])
    resolved = resolve_phase(spec, phase)
    assert f"run {run_name(resolved, phase)}" in out and "epochs       3 x" in out
    for uri in resolved.phase(phase).init.refs().values():  # references resolved to export URIs
        assert uri.startswith(str(root)) and uri.endswith("/export") and uri in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_phase_references_point_at_the_earlier_phases_exports(tmp_path):
    spec = load_spec(None, [f"storage.root={tmp_path}"])
    p4 = resolve_phase(spec, 4).phase(4).init
    assert p4.aligned_model == plan_for(resolve_phase(spec, 2), 2).export_uri
    assert p4.vqvae == plan_for(resolve_phase(spec, 3), 3).export_uri
    assert resolve_phase(spec, 3).phase(3).init.vision_encoder == plan_for(resolve_phase(spec, 2), 2).export_uri
    with pytest.raises(ValueError, match="resolve_phase first"):
        plan_for(spec, 2)


def test_run_names_are_stable_and_phase_local(tmp_path):
    base = [f"storage.root={tmp_path}"]
    a, b = load_spec(None, base), load_spec(None, base)
    assert run_name(resolve_phase(a, 1), 1) == run_name(resolve_phase(b, 1), 1)
    later = load_spec(None, [*base, "phases.phase4.lr=3e-4", "resources.max_failures=5"])
    assert run_name(resolve_phase(later, 1), 1) == run_name(resolve_phase(a, 1), 1)  # not phase 1's business
    changed = load_spec(None, [*base, "phases.phase1.lr=3e-4"])
    assert run_name(resolve_phase(changed, 1), 1) != run_name(resolve_phase(a, 1), 1)
    # phase 2 depends on phase 1 through its resolved init URI
    assert run_name(resolve_phase(changed, 2), 2) != run_name(resolve_phase(a, 2), 2)


@pytest.mark.parametrize(
    "argv, message",
    [(["--dry-run", "phases.phase1.nope=1"], "unknown key"), (["--dry-run", "phases.phase1.epochs"], "key=value")],
)
def test_bad_overrides_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main_phase(1, argv)
    captured = capsys.readouterr()
    assert message in str(exc.value) + captured.err
    assert exc.value.code != 0


def test_pipeline_dry_run_lists_all_phases(capsys, tmp_path):
    assert pipeline.main(["--dry-run", f"storage.root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("phase ")] == ["1:", "2:", "3:", "4:"]


def test_entry_script_runs_as_a_file(repo_root, tmp_path):
    proc = subprocess.run([sys.executable, "jobs/phase3.py", "--dry-run", f"storage.root={tmp_path}"],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "phase 3: run ctvlp-phase3-" in proc.stdout and "--- resolved spec" in proc.stdout


def test_run_names_do_not_depend_on_the_shard_codec_level():
    """zstd is lossless, so ``ingest.codec_level`` cannot change a phase's result: the default's
    move from 3 to 1 left every run its name (names of the default spec pinned as they were)."""
    names = lambda spec: [run_name(resolve_phase(spec, p), p) for p in (1, 2, 3, 4)]  # noqa: E731
    base = load_spec(None, ["storage.root=/runs"])
    assert names(base) == ["ctvlp-phase1-19fb3d1f94", "ctvlp-phase2-a34b1cae01", "ctvlp-phase3-42c99ced05",
                           "ctvlp-phase4-cd8aa9f842"]
    assert names(load_spec(None, ["storage.root=/runs", "ingest.codec_level=9"])) == names(base)

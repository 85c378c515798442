"""jobs/preflight.py: malformed specs and overrides stop every entry point before Ray starts.

``CASES`` is the table of issue 18 (``python tests/jobs/test_preflight.py`` prints it as
Markdown): each row runs a real entry point in-process with ``ray.init`` and ``jobs.common.init_ray``
replaced by a tripwire, and must exit with status 2, name the spec key, and never print the
canary secret.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

CANARY = "CANARY-s3cr3t-9f8e7d"
DEBUG = ["model.encoder_depth=debug", "model.text.name_or_path=tiny", "data.preset=demo"]


def _export(path: Path, parts: list[str]) -> str:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"parts": parts}))
    (path / "model.safetensors").write_bytes(b"")
    return str(path)


# (what, entry point, overrides, key that must be named); {tmp} is the test's tmp_path.
CASES = [
    ("storage root with an unsupported scheme", "pipeline", ["storage.root=hdfs://nn/runs"], "storage.root"),
    ("shards on an unsupported scheme", "phase1", ["data.shards_uri=gs://bucket/shards"], "data.shards_uri"),
    ("s3 URI without a bucket", "ingest", ["data.source_uri=s3:///ctrate"], "data.source_uri"),
    ("1-voxel crop (trained on nothing)", "pipeline", ["data.crop_size=[1,1,1]"], "data.crop_size"),
    ("crop not tiling the encoder stride", "phase1", ["data.crop_size=[40,64,64]"], "data.crop_size"),
    ("eval window not tiling the stride", "pipeline", ["data.eval_window=[48,60,64]"], "data.eval_window"),
    ("batch not splitting over workers", "pipeline", ["phases.phase3.global_batch_size=5"], "phases.phase3.global_batch_size"),
    ("batch smaller than the workers", "phase1", ["resources.num_workers=4", "phases.phase1.global_batch_size=2"],
     "phases.phase1.global_batch_size"),
    ("phase 2 alone before phase 1 exported", "phase2", [], "phases.phase2.init.vision_encoder"),
    ("init URI that does not exist", "phase4", ["phases.phase4.init.vqvae={tmp}/nope",
                                                "phases.phase4.init.aligned_model={tmp}/aligned"],
     "phases.phase4.init.vqvae"),
    ("init export lacking the needed part", "phase2", ["phases.phase2.init.vision_encoder={tmp}/vq_only"],
     "phases.phase2.init.vision_encoder"),
    ("text model not resolvable offline", "ingest",
     ["model.text.name_or_path=microsoft/BiomedVLP-CXR-BERT-specialized", "data.source_uri={tmp}/src"],
     "model.text.name_or_path"),
    ("text model directory without config", "phase2", ["model.text.name_or_path={tmp}",
                                                        "phases.phase2.init.vision_encoder={tmp}/aligned"],
     "model.text.name_or_path"),
    ("TotalSegmentator weights missing", "ingest", ["ingest.segmentation=totalsegmentator",
                                                    "data.source_uri={tmp}/src"], "ingest.totalseg"),
    ("report LLM path missing", "ingest", ["ingest.report_parser=llm", "ingest.llm_path={tmp}/no_llm",
                                           "data.source_uri={tmp}/src"], "ingest.llm_path"),
    ("endpoint that is not a URL", "phase1", ["storage.s3_endpoint_url=localhost:9000"], "storage.s3_endpoint_url"),
    ("GPU workers with 0 GPUs each", "phase1", ["resources.use_gpu=true", "resources.gpus_per_worker=0"],
     "resources.gpus_per_worker"),
    ("shards unset for training", "phase1", ["data.shards_uri=null"], "data.shards_uri"),
    ("relative storage root under job submit", "phase1+submit", ["storage.root=runs"], "storage.root"),
    ("relative shards under job submit", "pipeline+submit", ["data.shards_uri=demo_out/shards"], "data.shards_uri"),
    ("relative source under job submit", "ingest+submit", ["data.source_uri=corpus"], "data.source_uri"),
    ("evaluation of a missing export", "evaluate", ["eval.model={tmp}/missing_export"], "eval.model"),
    ("secret pasted as an unknown key", "pipeline", [f"storage.aws_secret_access_key={CANARY}"],
     "storage.aws_secret_access_key"),
    ("session token override", "phase1", [f"storage.session_token={CANARY}"], "storage.session_token"),
    ("secret key in the spec file", "phase1+secretfile", [], "aws_secret_access_key"),
    ("negative learning rate", "phase1", ["phases.phase1.lr=-1"], "phases.phase1.lr"),
    ("zero workers", "pipeline", ["resources.num_workers=0"], "resources.num_workers"),
    ("cluster too small for workers + data", "phase1+cluster2", ["resources.num_workers=2",
                                                                "resources.cpus_per_worker=1"],
     "resources.num_workers / resources.cpus_per_worker"),
]


def _run_entry(entry: str, argv: list[str]) -> int:
    from ingest.__main__ import main as ingest_main
    from jobs import evaluate, pipeline
    from jobs.launch import main_phase

    name = entry.split("+")[0]
    if name.startswith("phase"):
        return main_phase(int(name[-1]), argv)
    return {"pipeline": pipeline.main, "ingest": ingest_main, "evaluate": evaluate.main}[name](argv)


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must not start: ``ray.init`` and ``init_ray`` are tripwires (the cluster case connects
    to a fake 2-CPU cluster instead, as ``init_ray`` would, and must stop before any worker)."""
    import ray

    from jobs import common

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started before the preflight rejected the spec")

    monkeypatch.setattr(ray, "init", tripwire)
    monkeypatch.setattr(common, "init_ray", tripwire)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)


def run_case(tmp: Path, entry: str, overrides: list[str], monkeypatch) -> tuple[int, str]:
    """Run one row; returns (exit status, everything printed)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from jobs import common, preflight

    base = [*DEBUG, f"storage.root={tmp}/runs", f"data.shards_uri={tmp}/shards", f"data.source_uri={tmp}/src"]
    argv = [*base, *[o.format(tmp=tmp) for o in overrides]]
    if "+submit" in entry:
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    if "+secretfile" in entry:
        spec_file = tmp / "secret.yaml"
        spec_file.write_text(f"aws_secret_access_key: {CANARY}\n")
        argv = ["--spec", str(spec_file), *argv]
    if "+cluster2" in entry:
        monkeypatch.setattr(common, "init_ray", lambda: None)
        monkeypatch.setattr(preflight, "cluster_capacity", lambda: {"CPU": 2.0})
        monkeypatch.setattr("jobs.launch.run_phase", lambda *a, **k: pytest.fail("a phase started"))
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        try:
            code = _run_entry(entry, argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
            out.write(str(exc.code) if not isinstance(exc.code, int) else "")
    return code, out.getvalue()


@pytest.fixture
def exports(tmp_path):
    _export(tmp_path / "vq_only", ["vqvae"])
    _export(tmp_path / "aligned", ["vision", "text"])
    (tmp_path / "src").mkdir()
    return tmp_path


@pytest.mark.parametrize("what, entry, overrides, key", CASES, ids=[c[0] for c in CASES])
def test_malformed_spec_is_rejected_before_ray_naming_the_key(what, entry, overrides, key, exports,
                                                                no_ray, monkeypatch):
    code, out = run_case(exports, entry, overrides, monkeypatch)
    assert code == 2, out
    assert key in out, out
    assert CANARY not in out


def test_the_table_has_at_least_20_rows():
    assert len(CASES) >= 20


def test_a_spec_that_fits_passes(tmp_path):
    from ctvlp.config import load_spec
    from jobs.preflight import check_cluster, check_spec

    spec = load_spec(None, [*DEBUG, f"storage.root={tmp_path}", f"data.shards_uri={tmp_path}/s",
                            f"data.source_uri={tmp_path}", "resources.cpus_per_worker=0.5"])
    assert check_spec(spec, phases=(1, 2, 3, 4), ingest=True) == []
    assert check_cluster(spec, phases=(1, 2, 3, 4), capacity={"CPU": 2.0}) == []
    assert check_cluster(spec, phases=(1,), capacity={"CPU": 1.5})  # no CPU left for Ray Data


def test_ingest_under_job_submit_ignores_storage_root(tmp_path, monkeypatch):
    from ctvlp.config import load_spec
    from jobs.preflight import check_spec

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    spec = load_spec(None, [*DEBUG, f"data.source_uri={tmp_path}", f"data.shards_uri={tmp_path}/s"])
    assert spec.storage.root == "runs" and check_spec(spec, ingest=True) == []  # ingest writes no run
    assert [p.key for p in check_spec(spec, phases=(1,))] == ["storage.root"]


def test_an_autoscaling_cluster_counts_what_it_may_launch(monkeypatch):
    import ray

    from jobs import preflight

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0})
    monkeypatch.setattr("ray._private.state.state.get_max_resources_from_cluster_config",
                        lambda: {"CPU": 128, "GPU": 8})
    assert preflight.cluster_capacity() == {"CPU": 128.0, "GPU": 8.0}


def markdown_table(tmp: Path) -> str:
    """The table of the issue: every row run for real; the message's first problem line."""
    rows = ["| # | malformed input | entry point | overrides | exit | key named | secret printed | message |",
            "|---|---|---|---|---|---|---|---|"]
    mp = pytest.MonkeyPatch()
    import ray

    from jobs import common

    for i, (what, entry, overrides, key) in enumerate(CASES, 1):
        case_dir = tmp / f"case{i}"
        _export(case_dir / "vq_only", ["vqvae"])
        _export(case_dir / "aligned", ["vision", "text"])
        (case_dir / "src").mkdir()
        with mp.context() as m:
            m.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ray.init")))
            m.setattr(common, "init_ray", lambda: (_ for _ in ()).throw(AssertionError("init_ray")))
            m.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
            code, out = run_case(case_dir, entry, overrides, m)
        line = next((ln for ln in out.splitlines() if ln.startswith("- ")), out.strip().splitlines()[-1])
        shown = " ".join(o.format(tmp="$TMP") for o in overrides) or ("(spec file)" if "secretfile" in entry else "(defaults)")
        rows.append(f"| {i} | {what} | {entry} | `{shown}` | {code} | {'yes' if key in out else 'NO'} | "
                    f"{'YES' if CANARY in out else 'no'} | {line.replace('|', '/').replace(str(case_dir), '$TMP')[:220]} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile

    sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "platform")]
    with tempfile.TemporaryDirectory() as d:
        print(markdown_table(Path(d)))


def test_evaluation_takes_another_methods_export_but_not_a_vision_only_phase(tmp_path):
    """A MeDSLIP export holds no text part (its existence head scores), and its task rebuilds
    what it holds; a phase-1 export (vision only, no method) still cannot be scored zero-shot."""
    from ctvlp.config import load_spec
    from jobs.preflight import check_spec

    method = tmp_path / "medslip"
    _export(method, ["vision"])
    (method / "config.json").write_text(json.dumps({"parts": ["vision"], "method": "medslip"}))
    phase1 = _export(tmp_path / "phase1", ["vision"])
    base = [*DEBUG, f"storage.root={tmp_path}", f"data.shards_uri={tmp_path}/s"]
    assert check_spec(load_spec(None, [*base, f"eval.model={method}"]), evaluate=True) == []
    problems = check_spec(load_spec(None, [*base, f"eval.model={phase1}"]), evaluate=True)
    assert [p.key for p in problems] == ["eval.model"] and "lacks parts ['text']" in problems[0].message

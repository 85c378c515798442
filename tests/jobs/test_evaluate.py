"""The evaluate job on a tiny shard set: CSVs, metrics, held-out protocol, pictures and the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ctvlp.config import load_spec
from ctvlp.data import encode_volume
from ctvlp.tasks import build_task
from ctvlp.transforms.array import anatomy_boxes
from ingest.shards import commit_index, write_group
from ingest.storage import Storage
from jobs import evaluate as job

LUNG, HEART, LIVER = 9, 6, 8  # grouped mask values (anatomy index + 1) of the chest-abdomen grouping


def shard_row(sid: str, split: str, seed: int, num_anatomies: int) -> dict:
    """One 32^3 study: lung and heart always, liver in every other study; random disease labels."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((32, 32, 32), np.uint8)
    mask[4:14, 4:20, 4:14] = LUNG
    mask[16:26, 10:24, 12:26] = HEART
    if seed % 2:
        mask[26:31, 2:10, 2:10] = LIVER
    boxes, counts = anatomy_boxes(mask, num_anatomies)
    labels = {"Cardiomegaly": int(rng.integers(2)), "Lung nodule": int(rng.integers(2)),
              "Emphysema": seed % 3 == 0, "Liver cyst": int(rng.integers(2))}
    return {"status": "ok", "study_id": sid, "split": split, "shape": [32, 32, 32], "spacing": [8.0, 6.0, 6.0],
            "image": encode_volume(rng.integers(0, 256, mask.shape).astype(np.uint8)),
            "mask": encode_volume(mask), "codec": "zstd", "boxes": boxes.tolist(),
            "voxel_counts": counts.tolist(), "texts": [""] * num_anatomies,
            "abnormal": [int(rng.integers(2)) for _ in range(num_anatomies)],
            "input_ids": [[2, 3]] * num_anatomies,
            "disease_labels": json.dumps({k: int(v) for k, v in labels.items()}), "meta": "{}"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(spec, export dir): debug phase-4 export (random weights) + test/valid/train shards."""
    tmp = tmp_path_factory.mktemp("evaluate")
    base = load_spec("jobs/specs/debug.yaml")
    m = base.data.num_anatomies
    shards = tmp / "shards"
    for split, n in (("test", 12), ("valid", 8), ("train", 16)):
        rows = [shard_row(f"{split}{i:02d}", split, i, m) for i in range(n)]
        write_group(rows, f"{split}-00000-of-00001", Storage(), str(shards))
    commit_index(Storage(), str(shards), base.data.anatomies)
    torch.manual_seed(0)
    export = build_task(base, 4, init={}).export(tmp / "export4")
    spec = load_spec("jobs/specs/debug.yaml", [
        f"data.shards_uri={shards}", f"storage.root={tmp / 'runs'}", f"eval.model={export}",
        "eval.bootstrap_samples=30", "eval.batch_size=4", "resources.num_workers=1", "eval.tsne=true"])
    return spec, export


def test_dry_run_prints_the_plan(setup, capsys):
    spec, export = setup
    argv = ["--spec", "jobs/specs/debug.yaml", "--dry-run", f"data.shards_uri={spec.data.shards_uri}",
            f"storage.root={spec.storage.root}", f"eval.model={export}"]
    assert job.main(argv) == 0
    out = capsys.readouterr().out
    assert str(export) in out and "test: 1 shard(s)" in out and "diseases     22 over" in out


def test_dry_run_fails_cleanly_without_shards(tmp_path, capsys):
    argv = ["--spec", "jobs/specs/debug.yaml", "--dry-run", f"data.shards_uri={tmp_path}", "eval.model=/nowhere"]
    assert job.main(argv) == 2
    err = capsys.readouterr().err  # readers take the shard list from the index written at commit
    assert f"no {tmp_path}/index.json" in err and "run (or finish) the ingest job" in err


def test_output_dir_changes_with_model_and_eval_section(setup):
    spec, export = setup
    a = job.output_dir(spec, str(export))
    assert a.startswith(spec.storage.root) and a != job.output_dir(spec, "/other/export")
    spec2 = spec.model_copy(deep=True)
    spec2.eval.bootstrap_samples = 7
    assert job.output_dir(spec2, str(export)) != a


@pytest.mark.slow
def test_evaluate_job_end_to_end(setup, ray_session):
    spec, export = setup
    out = job.evaluate_model(spec)
    root = job.Path(out["out_dir"])
    scores = pd.read_csv(root / "scores.csv", index_col="VolumeName")
    labels = pd.read_csv(root / "labels.csv", index_col="VolumeName")
    assert list(scores.index) == [f"test{i:02d}" for i in range(12)] and list(scores.columns) == list(labels.columns)
    s = scores.to_numpy()
    assert ((s[np.isfinite(s)] >= 0) & (s[np.isfinite(s)] <= 1)).all()
    # liver only in odd studies: its diseases are empty cells (not evaluated) in the even ones
    assert scores["Liver cyst"].isna().to_numpy().tolist() == [i % 2 == 0 for i in range(12)]
    assert scores["Cardiomegaly"].notna().all() and scores["Splenomegaly"].isna().all()
    tables = out["tables"]
    assert len(tables) == 2  # evaluated-set and held-out (valid shards exist) protocols
    primary = out["primary"]
    assert primary.summary["skipped_scans"]["Liver cyst"] == 6
    assert "Cardiomegaly" in primary.per_disease.index and np.isfinite(primary.per_disease.at["Cardiomegaly", "auc"])
    assert primary.summary["macro_auc_ci"] is not None
    for name in ("per_disease.csv", "per_anatomy.md", "summary.json"):
        assert (root / "zero_shot" / name).is_file() and (root / "zero_shot_held_out" / name).is_file()
    html = (root / "report.html").read_text()
    assert html.count("<img") == len(list((root / "figures").glob("*.png"))) >= 4  # roc, tsne, activations, codes
    assert "held-out" in html and "Resolved spec" in html
    # the export now carries the validation-chosen thresholds and a card with the table
    record = json.loads((export / "evaluation.json").read_text())
    held_out = tables["zero-shot (held-out threshold: valid -> test)"].per_disease["threshold"]
    assert record["protocol"].startswith("held-out") and record["num_scans"] == 12
    assert all((t is None) == np.isnan(held_out[d]) and (t is None or t == held_out[d])
               for d, t in record["thresholds"].items())
    assert out["card"] == f"{export}/README.md" and "95% CI" in (export / "README.md").read_text()


@pytest.mark.slow
def test_vision_only_export_gets_the_linear_probe(setup, ray_session, tmp_path):
    spec, _ = setup
    export = build_task(spec, 1, init={}).export(tmp_path / "export1")
    out = job.evaluate_model(spec, str(export), str(tmp_path / "out"))
    assert list(out["tables"]) == ["linear probe (frozen vision encoder, paper Table 4)"]
    probe = out["probe"]
    assert probe is out["primary"] and "Cardiomegaly" in probe.per_disease.index
    scores = pd.read_csv(tmp_path / "out" / "scores.csv", index_col="VolumeName")
    assert scores.isna().all().all()  # no text encoder: no zero-shot scores
    assert (tmp_path / "out" / "linear_probe" / "per_disease.csv").is_file()

"""``python -m ctvlp.predict`` on NIfTI files, and exports found by folder, hub name and s3:// URI."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from ctvlp.predict import Predictor
from ctvlp.predict.__main__ import main


def test_cli_scores_nifti_files_and_rejects_a_bad_one(case, tmp_path, capsys):
    sids = case.study_ids[:2]
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a volume" * 50)
    scans = [str(case.files(s)[0]) for s in sids] + [str(garbage)]
    masks = [str(case.files(s)[1]) for s in sids] + [str(case.files(sids[0])[1])]
    argv = ["--model", str(case.export), *scans, "--out", str(tmp_path / "out" / "results.csv"), "--device", "cpu"]
    for m in masks:
        argv += ["--mask", m]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "scored 2 of 3 scans in" in out and "scans/s" in out and "garbage: rejected (unreadable" in out
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert table["VolumeName"].tolist() == [*sids, "garbage"] and table["status"].tolist() == ["ok", "ok", "rejected"]
    assert table.loc[2, "reason"] == "unreadable"
    predictor = Predictor.from_export(case.export, device="cpu")
    for i, sid in enumerate(sids):
        want = predictor(*case.files(sid)).probabilities
        got = {d: table.loc[i, d] for d in predictor.diseases}
        assert all(math.isnan(got[d]) if math.isnan(want[d]) else abs(got[d] - want[d]) < 1e-6 for d in want)
    assert table[[f"{d} (call)" for d in predictor.diseases]].isna().all().all()  # no evaluation.json: no calls


def test_cli_needs_one_mask_per_scan(case, tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["--model", str(case.export), "a.nii.gz", "b.nii.gz", "--mask", "m.nii.gz",
              "--out", str(tmp_path / "r.csv")])
    assert err.value.code == 2


def test_cli_reports_an_export_it_cannot_find(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nowhere"), "scan.nii.gz", "--out", str(tmp_path / "r.csv")]) == 2
    assert "is not a ctvlp export" in capsys.readouterr().err


def hub_cache(tmp_path, export, name="acme/ctvlp-debug", sha="0123456789abcdef0123456789abcdef01234567"):
    """A pre-populated Hugging Face hub cache holding ``export`` as ``name`` at ``refs/main``
    (the layout huggingface_hub writes: models--owner--name/{refs/main, snapshots/<sha>/...})."""
    repo = tmp_path / "hub" / f"models--{name.replace('/', '--')}"
    shutil.copytree(export, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return tmp_path / "hub"


def test_export_loads_by_hub_name_from_the_cache_offline(case, tmp_path):
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: never a download in tests
    cache = hub_cache(tmp_path, case.export)
    image, mask = case.files(case.study_ids[0])
    by_name = Predictor.from_pretrained("acme/ctvlp-debug", cache_dir=cache, device="cpu")(image, mask=mask)
    local = Predictor.from_export(case.export, device="cpu")(image, mask=mask)
    a, b = (np.array(list(p.probabilities.values())) for p in (by_name, local))
    assert np.array_equal(np.isnan(a), np.isnan(b)) and np.allclose(a[np.isfinite(a)], b[np.isfinite(b)], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not in the hub cache"):
        Predictor.from_pretrained("acme/not-cached", cache_dir=cache, device="cpu")


def test_export_loads_from_s3(case, s3_server, s3_client):
    from tests.ingest.corpus import upload_dir

    s3_client.create_bucket(Bucket="predict-export")
    upload_dir(s3_client, case.export, "predict-export", "models/debug4")
    predictor = Predictor.from_export("s3://predict-export/models/debug4", s3_endpoint_url=s3_server, device="cpu")
    assert predictor.diseases == Predictor.from_export(case.export, device="cpu").diseases

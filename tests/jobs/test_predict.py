"""jobs/predict.py: many scans through Ray Data actors give the one-process CLI's table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.mark.slow
def test_ray_data_batch_equals_the_one_process_cli(case, ray_session, tmp_path, capsys):
    from ctvlp.predict.__main__ import main as cli
    from jobs.predict import main as ray_main

    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a volume" * 50)
    scans = [str(case.files(s)[0]) for s in case.study_ids] + [str(garbage)]
    masks = [str(case.files(s)[1]) for s in case.study_ids] + [str(case.files(case.study_ids[0])[1])]
    argv = [a for m in masks for a in ("--mask", m)] + ["--model", str(case.export), *scans, "--device", "cpu"]
    assert ray_main([*argv, "--out", str(tmp_path / "ray.csv"), "--workers", "1", "--chunk", "2"]) == 0
    assert "Ray Data, 1 CPU actor(s)" in capsys.readouterr().out
    assert cli([*argv, "--out", str(tmp_path / "local.csv")]) == 0
    ray_table, local = pd.read_csv(tmp_path / "ray.csv"), pd.read_csv(tmp_path / "local.csv")
    assert ray_table["VolumeName"].tolist() == local["VolumeName"].tolist() == [*case.study_ids, "garbage"]
    assert ray_table["status"].tolist() == local["status"].tolist()
    numbers = [c for c in local.columns if c not in ("VolumeName", "scan", "status", "reason", "detail", "seconds")]
    np.testing.assert_allclose(ray_table[numbers].to_numpy(float), local[numbers].to_numpy(float), atol=1e-6)

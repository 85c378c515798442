"""Segmentation preflight: without GPU / nnU-Net / weights the job stops with a clear message."""

from __future__ import annotations

from ingest import segment


def test_missing_requirements_names_gpu_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))  # an empty weights folder
    problems = segment.missing_requirements(fast=False, num_gpus=0)
    text = "\n".join(problems)
    assert "no GPU" in text and "Dataset291" in text


def test_weights_found(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    (tmp_path / "Dataset297_TotalSegmentator_total_3mm_1559subj").mkdir()
    problems = segment.missing_requirements(fast=True, num_gpus=1)
    assert not any("weights" in p for p in problems)
